"""A log held in memory that reads like a recording: what the simulator or an importer yields,
played by `fusion.logs.player.Player` without writing a file first.

`MessageLog` takes ``(topic, message)`` pairs in log order (a message's log time is its
``capture_ns``; pairs of equal time keep their order, as a recording keeps its write order) and
offers what the player reads of a `RecordingReader`: ``path``, ``topics``, ``start_ns``,
``end_ns`` and ``messages(topics, start_ns, end_ns)``. Training replays its data through the
player's own lock-step stream this way (`fusion.learn.data`), so its frames are paired exactly as
``fusion play --lockstep`` pairs a recording of the same messages.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fusion.errors import RecordingError
from fusion.wire.messages import Message


@dataclass
class LoggedMessage:
    """One message of a `MessageLog`; ``decode`` returns a shallow copy (the player restamps
    what it plays, and the log must stay as it was for another pass)."""

    topic: str
    log_time_ns: int
    message: Message

    def decode(self) -> Message:
        return copy.copy(self.message)


class MessageLog:
    def __init__(self, messages: Iterable[tuple[str, Message]], name: str = "memory") -> None:
        self.path = Path(name)
        self._messages = [LoggedMessage(t, int(m.capture_ns), m) for t, m in messages]
        self._messages.sort(key=lambda m: m.log_time_ns)  # stable: equal times keep their order
        if not self._messages:
            raise RecordingError(f"{name}: no messages to play")

    @property
    def topics(self) -> dict[str, str]:
        """Topic -> message type, as `RecordingReader.topics`."""
        return {m.topic: type(m.message).__name__ for m in self._messages}

    @property
    def start_ns(self) -> int:
        return self._messages[0].log_time_ns

    @property
    def end_ns(self) -> int:
        return self._messages[-1].log_time_ns

    def messages(
        self,
        topics: Iterable[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> Iterator[LoggedMessage]:
        wanted = None if topics is None else set(topics)
        for m in self._messages:
            if wanted is not None and m.topic not in wanted:
                continue
            if (start_ns is not None and m.log_time_ns < start_ns) or (
                end_ns is not None and m.log_time_ns >= end_ns
            ):
                continue
            yield m
