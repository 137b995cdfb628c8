"""The recorder: receives topics and writes each message, byte for byte, to a recording.

Every topic is received in queued mode with a deep queue, even latest-only ones, because a
recording must hold every message, not the newest one. The recorder never slows a publisher
(ZeroMQ PUB drops instead of blocking); what it could not keep up with shows up as ``lost`` (gaps
in ``seq``) in `counters`. The MCAP log time of a message is the monotonic time it was received.

Given `views` (``fusion record --foxglove``: `fusion.logs.foxglove.FoxgloveChannels`), the
recorder also writes each message's view channels beside it, from the message it already
decoded on receipt; the msgpack record is written first and stays the recording.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import zmq

from fusion.logs.writer import RecordingWriter
from fusion.runtime.transport import Subscriber
from fusion.wire.messages import Message

#: Receive queue per topic, in messages: 50 s of a 20 Hz camera (the memory is spent only when
#: the writer falls behind).
RECORDER_QUEUE_SIZE = 1000
#: Most messages taken from one topic per `poll`, so one busy topic cannot starve the others.
MAX_BATCH = 64


class ViewWriter(Protocol):
    """Writes another viewer's channels for a message (`fusion.logs.foxglove.FoxgloveChannels`)."""

    def write(self, topic: str, msg: Message, log_time_ns: int) -> int: ...


class Recorder:
    """Writes what `subscribers` receive to `writer` (and, given `views`, their view channels).
    Call `poll` in a loop, then `close`."""

    def __init__(
        self,
        writer: RecordingWriter,
        subscribers: Mapping[str, Subscriber],
        views: ViewWriter | None = None,
    ) -> None:
        self.writer = writer
        self.views = views
        self.subscribers = dict(subscribers)
        self._poller = zmq.Poller()
        for sub in self.subscribers.values():
            self._poller.register(sub.socket, zmq.POLLIN)

    @classmethod
    def for_topics(
        cls,
        writer: RecordingWriter,
        topics: list[str],
        endpoints: Mapping[str, str] | None = None,
        queue_size: int = RECORDER_QUEUE_SIZE,
        views: ViewWriter | None = None,
    ) -> Recorder:
        """Subscribe to `topics` (queued, deep queues) at their endpoints (or the overrides)."""
        subs = {}
        try:
            for topic in topics:
                subs[topic] = Subscriber(
                    topic, (endpoints or {}).get(topic), latest_only=False, queue_size=queue_size
                )
        except Exception:
            for sub in subs.values():
                sub.close()
            raise
        return cls(writer, subs, views)

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to `timeout_ms` for messages, write all that arrived; how many were written."""
        self._poller.poll(timeout_ms)
        total = 0
        for topic, sub in self.subscribers.items():
            for _ in range(MAX_BATCH):
                got = sub.recv_with_frames(0)
                if got is None:
                    break
                frames, msg = got
                self.writer.write_frames(
                    topic, frames, msg.trace["received"], msg.capture_ns, sequence=msg.seq
                )
                if self.views is not None:
                    self.views.write(topic, msg, msg.trace["received"])
                total += 1
        return total

    def drain(self) -> int:
        """Write everything already queued (on shutdown); how many were written."""
        total = 0
        while (n := self.poll(0)) > 0:
            total += n
        return total

    def counters(self) -> dict[str, dict[str, int]]:
        """Per topic: written, and the subscriber's received/lost/rejected/restarts, reconnects,
        senders forgotten and rejections by reason."""
        return {
            topic: {
                "written": self.writer.counts.get(topic, 0),
                **sub.stats.as_dict(),
                **sub.stats.details(),
            }
            for topic, sub in self.subscribers.items()
        }

    def summary_line(self) -> str:
        parts = []
        for topic, c in self.counters().items():
            extra = "".join(
                f" {k} {c[k]}"
                for k in ("lost", "rejected", "reconnects", "senders_forgotten")
                if c[k]
            )
            parts.append(f"{topic} {c['written']}{extra}")
        line = "written: " + ", ".join(parts)
        if self.views is not None:
            line += f"; views {sum(self.writer.view_counts.values())}"
        return line

    def close(self) -> None:
        for sub in self.subscribers.values():
            sub.close()
