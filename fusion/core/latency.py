"""Latency statistics: the one histogram nodes, the launcher, the pipeline and reports share.

`LatencyHistogram` records latencies given in milliseconds into an HDR histogram (the
`hdrhistogram` package) at microsecond resolution with 3 significant digits: constant memory
however long a node runs, constant time per sample, and percentiles within 0.1 % of the
recorded values. It reports p50/p95/p99/max in milliseconds and the count (``n``).
"""

from __future__ import annotations

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
