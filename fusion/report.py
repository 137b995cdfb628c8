"""Latency, drop and mode reports from recorded `Detections`.

Every `Detections` message carries its input's latency trace extended by each stage, and a
recorder logs when it received it, so one recording of the outputs holds the whole story:

| stage | from -> to |
|---|---|
| transport in | ``input_published`` -> ``received`` (player/sensor to fusion node) |
| sync | ``received`` -> ``synced`` (waiting for the radar match) |
| preprocess | ``synced`` -> ``preprocessed`` |
| model | ``preprocessed`` -> ``inferred`` |
| decode | ``inferred`` -> ``decoded`` |
| publish | ``decoded`` -> ``published`` |
| transport out | ``published`` -> the recorder's log time |
| capture -> detections | ``capture_ns`` -> ``decoded`` |
| capture -> recorded | ``capture_ns`` -> the recorder's log time |

Only monotonic-clock outputs are timed (a replay restamps its inputs onto the monotonic clock).
Each stage is one `fusion.core.latency.LatencyHistogram`, the histogram the nodes use; the stages
are `fusion.core.latency.STAGES`, shared with the viewers (`fusion.views`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fusion.core.latency import STAGES, LatencyHistogram, stage_latencies_ms
from fusion.logs.reader import RecordingReader
from fusion.wire.messages import Detections


@dataclass
class LatencyReport:
    latency_ms: dict[str, LatencyHistogram] = field(default_factory=dict)
    modes: Counter = field(default_factory=Counter)
    outputs: int = 0
    invalid: int = 0
    budget_misses: int = 0
    camera_seqs: set[int] = field(default_factory=set)
    objects: int = 0
    health: list[float] = field(default_factory=list)

    def add(self, det: Detections, log_time_ns: int | None = None) -> None:
        self.outputs += 1
        self.modes[det.mode] += 1
        self.invalid += not det.valid
        self.budget_misses += det.budget_miss
        self.objects += len(det.objects)
        if "camera" in det.source_seqs:
            self.camera_seqs.add(det.source_seqs["camera"])
        if "score" in det.health:
            self.health.append(det.health["score"])
        if det.clock != "monotonic":
            return
        for name, ms in stage_latencies_ms(det.trace, det.capture_ns, log_time_ns).items():
            self.latency_ms.setdefault(name, LatencyHistogram()).add(ms)

    def percentiles(self) -> dict[str, dict[str, float]]:
        """Per timed stage, in `STAGES` order: p50/p95/p99/max (ms) and ``n``."""
        return {
            name: self.latency_ms[name].percentiles()
            for name, _, _ in STAGES
            if name in self.latency_ms
        }

    def as_dict(self) -> dict:
        return {
            "latency_ms": self.percentiles(),
            "outputs": self.outputs,
            "modes": dict(self.modes),
            "invalid": self.invalid,
            "budget_misses": self.budget_misses,
            "objects": self.objects,
            "health_score_mean": float(np.mean(self.health)) if self.health else None,
        }

    def table(self) -> str:
        lines = ["| stage | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|"]
        for name, p in self.percentiles().items():
            lines.append(
                f"| {name} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f} | {p['max']:.1f} |"
            )
        return "\n".join(lines)


def report_from_recording(path: str) -> LatencyReport:
    """Read every `Detections` of a recording (the recorder's log time is the arrival)."""
    report = LatencyReport()
    with RecordingReader(path) as reader:
        for record in reader.messages(topics=["detections"]):
            report.add(record.decode(), record.log_time_ns)
    return report
