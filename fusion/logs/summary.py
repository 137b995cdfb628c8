"""What ``fusion info`` says about a recording: topics, counts, rates, duration, gaps and size.

`RecordingSummary` is built by `fusion.logs.reader.RecordingReader.summary` from the log times of
every message (read from the file's message indexes, or from the chunks of a damaged file);
`topic_summary` turns one topic's log times into its rate and its gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fusion.wire import services

#: An interval on a topic longer than this many times its median (non-zero) interval is a gap.
GAP_FACTOR = 3.0


@dataclass(frozen=True)
class Gap:
    """An interval on one topic longer than `GAP_FACTOR` times its median interval."""

    topic: str
    start_ns: int
    duration_ns: int


@dataclass(frozen=True)
class TopicSummary:
    topic: str
    message_type: str
    count: int
    first_ns: int
    last_ns: int
    rate_hz: float
    nominal_rate_hz: float | None
    gaps: tuple[Gap, ...]


@dataclass(frozen=True)
class RecordingSummary:
    """What `fusion info` prints. Times are MCAP log times (ns); sizes in bytes."""

    path: str
    size_bytes: int
    indexed: bool
    start_ns: int
    end_ns: int
    message_count: int
    chunk_count: int
    compressed_bytes: int
    uncompressed_bytes: int
    topics: dict[str, TopicSummary]
    metadata: dict[str, dict[str, str]]
    damage: str | None

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9 if self.message_count else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "topics"}
        out["duration_s"] = self.duration_s
        out["topics"] = {
            name: {**t.__dict__, "gaps": [g.__dict__ for g in t.gaps]}
            for name, t in self.topics.items()
        }
        return out

    def format(self) -> str:
        ratio = self.uncompressed_bytes / self.compressed_bytes if self.compressed_bytes else 1.0
        # View channels (Foxglove's) have long topic and schema names.
        topic_w = max([14, *(len(t.topic) for t in self.topics.values())])
        type_w = max([12, *(len(t.message_type) for t in self.topics.values())])
        lines = [
            f"{self.path}: {self.size_bytes / 1e6:.1f} MB, {self.duration_s:.2f} s, "
            f"{self.message_count} messages in {self.chunk_count} chunks "
            f"(compression {ratio:.2f}x), {'indexed' if self.indexed else 'NOT indexed (scanned)'}",
            f"{'topic':<{topic_w}} {'type':<{type_w}} {'count':>7} {'rate_hz':>8} {'nominal':>8} "
            f"{'gaps':>5}  longest gap",
        ]
        for t in self.topics.values():
            nominal = f"{t.nominal_rate_hz:.1f}" if t.nominal_rate_hz else "-"
            longest = max(t.gaps, key=lambda g: g.duration_ns, default=None)
            where = (
                f"{longest.duration_ns / 1e9:.3f} s at "
                f"+{(longest.start_ns - self.start_ns) / 1e9:.2f} s"
                if longest
                else "-"
            )
            lines.append(
                f"{t.topic:<{topic_w}} {t.message_type:<{type_w}} {t.count:>7} {t.rate_hz:>8.2f} "
                f"{nominal:>8} "
                f"{len(t.gaps):>5}  {where}"
            )
        for name, values in self.metadata.items():
            lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
        if self.damage:
            lines.append(f"DAMAGED: {self.damage}")
        return "\n".join(lines)


def topic_summary(topic: str, message_type: str, times: np.ndarray | list[int]) -> TopicSummary:
    """One topic's count, rate and gaps from the sorted log times of its messages."""
    times = np.asarray(times, dtype=np.int64)
    count = len(times)
    first_ns, last_ns = (int(times[0]), int(times[-1])) if count else (0, 0)
    rate = (count - 1) / ((last_ns - first_ns) / 1e9) if count > 1 and last_ns > first_ns else 0.0
    gaps: list[Gap] = []
    intervals = np.diff(times)
    # Simultaneous messages (one per sensor) are not intervals of the topic's rhythm.
    positive = intervals[intervals > 0]
    if len(positive):
        threshold = GAP_FACTOR * float(np.median(positive))
        gaps = [
            Gap(topic, int(times[i]), int(intervals[i]))
            for i in np.flatnonzero(intervals > threshold)
        ]
    svc = services.SERVICES.get(topic)
    return TopicSummary(
        topic=topic,
        message_type=message_type,
        count=count,
        first_ns=first_ns,
        last_ns=last_ns,
        rate_hz=rate,
        nominal_rate_hz=svc.rate_hz if svc else None,
        gaps=tuple(gaps),
    )
