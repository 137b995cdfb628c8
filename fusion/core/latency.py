"""Latency statistics: the one histogram nodes, the launcher, the pipeline and reports share.

`LatencyHistogram` records latencies given in milliseconds into an HDR histogram (the
`hdrhistogram` package) at microsecond resolution with 3 significant digits: constant memory
however long a node runs, constant time per sample, and percentiles within 0.1 % of the
recorded values. It reports p50/p95/p99/max in milliseconds and the count (``n``).

`STAGES` names the stages of an output's latency trace and `stage_latencies_ms` times them, so
the latency report (`fusion.report`) and the live and exported views (`fusion.views`) split a
`Detections` message's latency the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

from hdrh.histogram import HdrHistogram

#: Longest latency recorded as itself (one hour, in microseconds); longer ones count as this.
MAX_LATENCY_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50, 95, 99)


class LatencyHistogram:
    """Latencies (ms) since creation; `percentiles` gives p50/p95/p99/max (ms) and ``n``."""

    def __init__(self) -> None:
        self._histogram = HdrHistogram(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)

    @property
    def count(self) -> int:
        return self._histogram.get_total_count()

    def add(self, latency_ms: float) -> None:
        # A negative latency (stamps from two clocks) is recorded as 0, an endless one as the top.
        self._histogram.record_value(min(max(round(latency_ms * 1000), 0), MAX_LATENCY_US))

    def percentiles(self) -> dict[str, float]:
        """``{"p50", "p95", "p99", "max"}`` in ms (NaN before the first sample) and ``"n"``."""
        if not self.count:
            return {**{f"p{p}": float("nan") for p in PERCENTILES}, "max": float("nan"), "n": 0}
        values_us = self._histogram.get_percentile_to_value_dict(list(PERCENTILES))
        return {
            **{f"p{p}": values_us[p] / 1000 for p in PERCENTILES},
            "max": self._histogram.get_max_value() / 1000,
            "n": self.count,
        }


def format_latency(stats: LatencyHistogram) -> str:
    p = stats.percentiles()
    return f"p50 {p['p50']:.1f} ms p99 {p['p99']:.1f} ms max {p['max']:.1f} ms (n={stats.count})"


#: The stages of a `Detections` output's latency: (name, from stamp, to stamp). The stamps are
#: its trace's hops plus ``capture`` (its ``capture_ns``) and ``log`` (when a recorder, or a
#: live view, received it).
STAGES: tuple[tuple[str, str, str], ...] = (
    ("transport in", "input_published", "received"),
    ("sync", "received", "synced"),
    ("preprocess", "synced", "preprocessed"),
    ("model", "preprocessed", "inferred"),
    ("decode", "inferred", "decoded"),
    ("publish", "decoded", "published"),
    ("transport out", "published", "log"),
    ("capture -> detections", "capture", "decoded"),
    ("capture -> recorded", "capture", "log"),
)


def stage_latencies_ms(
    trace: Mapping[str, int],
    capture_ns: int,
    log_time_ns: int | None = None,
    *,
    clock: str = "monotonic",
) -> dict[str, float]:
    """Stage name -> latency (ms), in `STAGES` order, for each stage whose two stamps are known.
    The trace's stamps are monotonic; `capture_ns` and `log_time_ns` count only when `clock`
    (the output's ``clock``) is ``monotonic`` too: on another clock (a lock-step replay put
    back on the recording's clock) only the stages between two trace stamps are timed."""
    stamps = dict(trace)
    if clock == "monotonic":
        stamps["capture"] = capture_ns
        if log_time_ns is not None:
            stamps["log"] = log_time_ns
    return {
        name: (stamps[end] - stamps[start]) / 1e6
        for name, start, end in STAGES
        if start in stamps and end in stamps
    }
