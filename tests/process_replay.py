"""Process replay: a shipped drive through the fusion node's logic, compared with a reference.

Each entry of `CONFIGS` names a node, the recording and topics it reads, the output fields to
ignore (wall-clock stamps) and the tolerance for floats. Inputs are fed in recording order as the
lock-step player sends them: every message up to a camera frame, then the frame is processed
with the radar scans that came before it. The model runs in fp32 on one CPU thread, so outputs
are reproducible to well within the tolerance.

    .venv/bin/python -m tests.process_replay            # compare (what the test does)
    .venv/bin/python -m tests.process_replay --update   # regenerate the references
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion.logs.reader import RecordingReader
from fusion.perception.pipeline import FusionPipeline, PipelineConfig
from fusion.wire.messages import DETECTION_DTYPE, CameraFrame, Detections

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(__file__).parent / "reference"
REGENERATE = ".venv/bin/python -m tests.process_replay --update"


@dataclass(frozen=True)
class ReplayConfig:
    name: str
    recording: str
    inputs: tuple[str, ...]
    end_s: float  # replay the first seconds of the drive only, to keep the test short
    ignore_fields: tuple[str, ...]  # output fields that hold wall-clock stamps
    tolerance: float  # absolute, on every float of every detection


CONFIGS = (
    ReplayConfig(
        name="fusion_city",
        recording="recordings/city.mcap",
        inputs=("calibration", "ego_motion", "radar", "camera"),
        end_s=4.0,
        ignore_fields=("capture_ns", "trace", "clock"),
        tolerance=1e-3,
    ),
)


class _Clock:
    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


def replay_fusion(config: ReplayConfig, weights: Path | None = None) -> list[Detections]:
    """The fusion node's outputs for the recording, in order."""
    from fusion.model.detector import DEFAULT_WEIGHTS, Detector

    detector = Detector.load(weights or DEFAULT_WEIGHTS, device="cpu", threads=1, backend="torch")
    clock = _Clock()
    pipeline = FusionPipeline(
        detector,
        PipelineConfig(drop_stale=False, answer_every_frame=True, sync_deadline_ms=1.0),
        clock_ns=clock,
    )
    reader = RecordingReader(REPO / config.recording)
    end_ns = reader.start_ns + int(config.end_s * 1e9)
    outputs = []
    for record in reader.messages(topics=config.inputs, end_ns=end_ns):
        msg = record.decode()
        clock.now_ns = msg.capture_ns
        pipeline.add(record.topic, msg, now_ns=clock.now_ns)
        if isinstance(msg, CameraFrame):
            clock.now_ns = msg.capture_ns + int(pipeline.cfg.sync_deadline_ms * 1e6)
            outputs += pipeline.step(clock.now_ns)
    return outputs


def to_arrays(outputs: list[Detections], ignore: tuple[str, ...]) -> dict[str, np.ndarray]:
    kept = [
        f.name
        for f in dataclasses.fields(Detections)
        if f.name not in (*ignore, "objects", "health")
    ]
    arrays = {
        "counts": np.array([len(o.objects) for o in outputs], np.int64),
        "objects": np.concatenate([o.objects for o in outputs])
        if outputs
        else np.zeros(0, DETECTION_DTYPE),
    }
    for name in kept:
        arrays[f"field_{name}"] = np.array([repr(getattr(o, name)) for o in outputs])
    keys = sorted({k for o in outputs for k in o.health})
    arrays["health_keys"] = np.array(keys)
    arrays["health"] = np.array([[o.health.get(k, np.nan) for k in keys] for o in outputs])
    return arrays


def compare(
    config: ReplayConfig, got: dict[str, np.ndarray], want: dict[str, np.ndarray]
) -> list[str]:
    problems = []
    for key in sorted(set(want) | set(got)):
        if key not in got or key not in want:
            problems.append(f"{key}: only in {'reference' if key in want else 'this run'}")
        elif key in ("objects", "health"):
            continue
        elif not np.array_equal(got[key], want[key]):
            diff = (
                np.flatnonzero(got[key] != want[key]) if got[key].shape == want[key].shape else []
            )
            problems.append(f"{key}: differs (outputs {list(diff[:5])}...)")
    if not problems and not np.allclose(
        got["health"], want["health"], atol=config.tolerance, rtol=0, equal_nan=True
    ):
        worst = np.nanmax(np.abs(got["health"] - want["health"]))
        problems.append(f"health: max difference {worst:.2e} > {config.tolerance}")
    if not problems:
        for name in DETECTION_DTYPE.names:
            a, b = got["objects"][name], want["objects"][name]
            if name == "class_id":
                ok = np.array_equal(a, b)
            else:
                ok = np.allclose(a, b, atol=config.tolerance, rtol=0, equal_nan=True)
            if not ok:
                worst = np.nanmax(np.abs(a.astype(float) - b.astype(float)))
                problems.append(f"objects.{name}: max difference {worst:.2e} > {config.tolerance}")
    return problems


def reference_path(config: ReplayConfig) -> Path:
    return REFERENCE_DIR / f"{config.name}.npz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the references")
    args = parser.parse_args(argv)
    failed = False
    for config in CONFIGS:
        got = to_arrays(replay_fusion(config), config.ignore_fields)
        path = reference_path(config)
        if args.update:
            REFERENCE_DIR.mkdir(exist_ok=True)
            np.savez_compressed(path, **got)
            print(f"{config.name}: wrote {path} ({len(got['counts'])} outputs)")
            continue
        problems = compare(config, got, dict(np.load(path)))
        print(f"{config.name}: {'ok' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"  {problem}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
