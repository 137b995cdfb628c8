"""Latency statistics: the one histogram nodes, the launcher, the pipeline and reports share."""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyStats:
    """Rolling latency samples (ms) with percentiles."""

    def __init__(self, window: int = 2000) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self.count = 0

    def add(self, latency_ms: float) -> None:
        self._samples.append(latency_ms)
        self.count += 1

    def percentiles(self) -> dict[str, float]:
        if not self._samples:
            return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
        a = np.fromiter(self._samples, dtype=np.float64)
        return {
            "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)),
            "max": float(a.max()),
        }


def format_latency(stats: LatencyStats) -> str:
    p = stats.percentiles()
    return f"p50 {p['p50']:.1f} ms p99 {p['p99']:.1f} ms max {p['max']:.1f} ms (n={stats.count})"
