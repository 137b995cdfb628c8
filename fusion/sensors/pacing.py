"""Releasing replayed and simulated messages at their own timing, stamped on this host's clock.

A file, a recording or the simulator yields messages on its own clock (a file's frame times, a
recording's capture stamps, simulation time). `Pacer` releases them at their original timing
(times a rate) and `paced` restamps ``capture_ns`` onto this host's monotonic clock, keeping the
source's stamp in ``trace["recorded_capture_ns"]``, so the rest of the graph measures latency the
same way for live and replayed data. Live devices are stamped at capture and need no pacing.

The stamp is the moment the message was *due*, not the moment it was released: at rate 1 every
source interval is kept exactly (only shifted), whatever the release jitter, and two producers
of one drive anchored at the same epoch keep the drive's offsets between sensors. A producer
emulates a live sensor, so at another rate its stamps follow the pace (and as fast as possible
they are the release times); to replay with the recorded spacing at another pace, use `fusion
play --rate`, which tells the consumers the pace.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

from fusion.runtime import heartbeat
from fusion.wire.messages import Message, restamp


class Pacer:
    """Releases messages at their source timing divided by `rate` (0 = as fast as possible).

    By default the first message is released at once. With `epoch_ns` (a monotonic time shared
    by several producers, e.g. ``$FUSION_EPOCH_NS`` set by the launcher) source time 0 is due at
    `epoch_ns`, so independent producers of one simulated drive stay aligned; a producer that
    (re)starts after the epoch skips what is already past, as a live sensor would, and counts it
    in `skipped`. A source that starts again (a looped file: its time goes backwards) continues
    one typical gap after the last message instead of bursting.
    """

    def __init__(self, rate: float = 1.0, epoch_ns: int | None = None) -> None:
        self.rate = rate
        self.epoch_ns = epoch_ns
        self.skipped = 0
        self._t0_ns: int | None = None
        self._source_t0_ns = 0
        self._last_source_ns = 0
        self._last_gap_ns = 0

    def start_offset_ns(self) -> int:
        """How far into its source an epoch-anchored producer (re)starting now should begin:
        what is already past would only be skipped, and a simulated camera that renders every
        skipped frame falls further behind than it catches up on a busy machine."""
        if self.epoch_ns is None or self._t0_ns is not None or self.rate <= 0:
            return 0
        return max(0, int((time.monotonic_ns() - self.epoch_ns) * self.rate))

    def wait(self, source_ns: int) -> int | None:
        """Sleep until `source_ns` is due; return the monotonic time it was due at (released at
        when untimed), or None for a message already past due at an epoch-anchored (re)start."""
        now = time.monotonic_ns()
        if self._t0_ns is None:
            if self.epoch_ns is None:
                self._t0_ns, self._source_t0_ns, self._last_source_ns = now, source_ns, source_ns
                return now
            self._t0_ns, self._source_t0_ns, self._last_source_ns = self.epoch_ns, 0, source_ns
        if source_ns < self._last_source_ns:  # the source started again
            self._source_t0_ns += source_ns - self._last_source_ns - self._last_gap_ns
        elif source_ns > self._last_source_ns:
            self._last_gap_ns = source_ns - self._last_source_ns
        self._last_source_ns = source_ns
        if self.rate <= 0:
            return now
        due = self._t0_ns + int((source_ns - self._source_t0_ns) / self.rate)
        if self.epoch_ns is not None and due < now - self._last_gap_ns:
            self.skipped += 1
            return None
        if due > now:
            heartbeat.sleep((due - now) / 1e9)  # a wait for the epoch may last seconds
        return due


def epoch_from_env() -> int | None:
    """``$FUSION_EPOCH_NS``: the monotonic time a graph's simulated drive starts."""
    value = os.environ.get("FUSION_EPOCH_NS")
    return int(value) if value else None


def paced(stream: Iterable[tuple[str, Message]], pacer: Pacer) -> Iterator[tuple[str, Message]]:
    """`stream` released by `pacer` and restamped with the time it was due; what `pacer` finds
    already past due (an epoch-anchored producer that started late) is left out."""
    for topic, msg in stream:
        released_ns = pacer.wait(msg.capture_ns)
        if released_ns is not None:
            yield topic, restamp(msg, released_ns)
