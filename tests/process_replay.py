"""Process replay: recorded drives through the fusion node's logic, compared with references.

A table of configs, as openpilot's ``process_replay`` keeps one: each names a recording (a
shipped drive, or one derived from it), the topics the player plays, the faults it injects, the
output fields to ignore (wall-clock stamps) and the tolerance on floats. Each is fed exactly as
``fusion play --lockstep`` sends it to a ``--lockstep`` fusion node: the player's own
`Player.lockstep_stream` (its ordering, restamping, faults and steps) into
`FusionPipeline.feed`, the door the node uses. The model runs in fp32 on one CPU thread, and the
player's clock is fixed, so outputs are reproducible to well within the tolerance (on another
CPU's kernels too; a box whose score sits on the threshold could still come or go).

    .venv/bin/python -m tests.process_replay                 # compare every config
    .venv/bin/python -m tests.process_replay --only city     # some of them
    .venv/bin/python -m tests.process_replay --update        # compare, show what changed, write

The references live in ``tests/reference/<config>.npz``. ``--update`` first prints, per config,
what changed against the committed reference (outputs, modes, the first differing field, the
largest float change), then writes it; review that before committing. The model and its
weights are about to change (another engineer's work): after that lands, one ``--update`` makes
every reference again.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusion.logs.faults import FaultInjector
from fusion.logs.player import Player
from fusion.logs.reader import RecordingReader
from fusion.logs.writer import RecordingWriter
from fusion.perception.pipeline import FusionPipeline, PipelineConfig
from fusion.wire.messages import DETECTION_DTYPE, Detections

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(__file__).parent / "reference"
DERIVED_DIR = REPO / "out" / "process_replay"
REGENERATE = ".venv/bin/python -m tests.process_replay --update"
ALL_TOPICS = ("calibration", "ego_motion", "radar", "camera")
#: Boxes below this score (decoding keeps down to 0.05) are left out of the references: in that
#: long tail, whether a box lands just above or below a cut can depend on the CPU's rounding.
REFERENCE_MIN_SCORE = 0.2
#: Output fields compared exactly, in the order a difference is looked for.
EXACT_FIELDS = ("source_seqs", "mode", "valid", "budget_miss", "seq", "capture_ns", "clock")


def clock_jump_recording(folder: Path) -> Path:
    """The first 4 s of the city drive with the camera's clock jumping back 300 ms at 2 s (its
    capture stamps, not when the frames were logged): the frames after the jump look older than
    the ones already fused, and then their scans no longer match."""
    out = folder / "city_camera_clock_jump.mcap"
    with RecordingReader(REPO / "recordings" / "city.mcap") as reader, RecordingWriter(out) as w:
        for rec in reader.messages(end_ns=reader.start_ns + 4_000_000_000):
            msg = rec.decode()
            if rec.topic == "camera" and rec.log_time_ns - reader.start_ns >= 2_000_000_000:
                msg.capture_ns -= 300_000_000
            w.write(rec.topic, msg, log_time_ns=rec.log_time_ns)
    return out


@dataclass(frozen=True)
class ReplayConfig:
    name: str
    recording: str | Callable[[Path], Path]  # a path in the repo, or a maker of one
    topics: tuple[str, ...] = ALL_TOPICS  # what the player plays
    faults: tuple[str, ...] = ()  # ``--inject`` specs
    end_s: float = 4.0  # the first seconds of the drive only, to keep the test short
    ignore_fields: tuple[str, ...] = ("trace",)  # wall-clock stamps of the node's stages
    tolerance: float = 1e-3  # absolute, on every float of every detection and health score
    all_valid: bool = True  # whether every output must be valid
    notes: str = field(default="", compare=False)

    def path(self) -> Path:
        if isinstance(self.recording, str):
            return REPO / self.recording
        DERIVED_DIR.mkdir(parents=True, exist_ok=True)
        return self.recording(DERIVED_DIR)


CONFIGS = (
    ReplayConfig("city", "recordings/city.mcap"),
    ReplayConfig("night", "recordings/night.mcap"),
    ReplayConfig("highway", "recordings/highway.mcap"),
    ReplayConfig(
        "camera_only",
        "recordings/city.mcap",
        topics=("calibration", "ego_motion", "camera"),
        notes="radar dropped: every frame camera-only",
    ),
    ReplayConfig(
        "radar_only",
        "recordings/city.mcap",
        topics=("calibration", "ego_motion", "radar"),
        notes="camera dropped: one radar-only output per scan",
    ),
    ReplayConfig(
        "faults",
        "recordings/city.mcap",
        faults=(
            "drop:radar:1s@500ms",
            "duplicate:camera@2s",
            "reorder:radar@2500ms",
            "delay:camera:30ms@3s",
        ),
        all_valid=False,
        notes="radar gap, then duplicated frames (the copies answered invalid), swapped scans",
    ),
    ReplayConfig(
        "clock_jump",
        clock_jump_recording,
        all_valid=False,
        notes="camera clock 300 ms back at 2 s: the frames it makes look old answered invalid",
    ),
)


def lockstep_stream(config: ReplayConfig):
    """What ``fusion play --lockstep`` publishes for `config`, in order, steps included."""
    reader = RecordingReader(config.path())
    faults = FaultInjector(config.faults) if config.faults else None
    player = Player.in_process(reader, topics=config.topics, end_s=config.end_s, faults=faults)
    return player.lockstep_stream()


def replay_fusion(config: ReplayConfig, weights: Path | None = None) -> list[Detections]:
    """The fusion node's outputs for `config`, in order."""
    from fusion.model.detector import DEFAULT_WEIGHTS, Detector

    detector = Detector.load(weights or DEFAULT_WEIGHTS, device="cpu", threads=1, backend="torch")
    pipeline = FusionPipeline(detector, PipelineConfig(lockstep=True), clock_ns=lambda: 0)
    outputs = []
    for topic, msg in lockstep_stream(config):
        outputs += pipeline.feed(topic, msg)
    return outputs


def to_arrays(outputs: list[Detections], ignore: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The outputs as arrays (what a reference file holds): every field, and the boxes scored
    at least `REFERENCE_MIN_SCORE`."""
    kept = [o.objects[o.objects["score"] >= REFERENCE_MIN_SCORE] for o in outputs]
    arrays = {
        "counts": np.array([len(k) for k in kept], np.int64),
        "objects": np.concatenate(kept) if kept else np.zeros(0, DETECTION_DTYPE),
    }
    for name in EXACT_FIELDS:
        if name not in ignore:
            arrays[f"field_{name}"] = np.array([repr(getattr(o, name)) for o in outputs], dtype=str)
    arrays["recorded_capture_ns"] = np.array(
        [o.trace.get("recorded_capture_ns", -1) for o in outputs], np.int64
    )
    keys = sorted({k for o in outputs for k in o.health})
    arrays["health_keys"] = np.array(keys, dtype=str)
    arrays["health"] = np.array(
        [[o.health.get(k, np.nan) for k in keys] for o in outputs], np.float64
    ).reshape(len(outputs), len(keys))
    return arrays


def _rows(arrays: dict[str, np.ndarray]) -> list[dict[str, object]]:
    """One dict per output, from `to_arrays`'s arrays."""
    starts = np.concatenate([[0], np.cumsum(arrays["counts"])])
    keys = [str(k) for k in arrays["health_keys"]]
    rows = []
    for i in range(len(arrays["counts"])):
        fields = [name for name in arrays if name.startswith("field_")]
        row: dict[str, object] = {name[len("field_") :]: str(arrays[name][i]) for name in fields}
        row["recorded_capture_ns"] = int(arrays["recorded_capture_ns"][i])
        row["health"] = dict(zip(keys, arrays["health"][i].tolist(), strict=True))
        row["objects"] = arrays["objects"][starts[i] : starts[i + 1]]
        rows.append(row)
    return rows


def compare(
    config: ReplayConfig, got: dict[str, np.ndarray], want: dict[str, np.ndarray]
) -> list[str]:
    """What differs, most telling first: the output count, the first output and field that
    differ (with both values), and the largest float difference."""
    got_rows, want_rows = _rows(got), _rows(want)
    problems = []
    if len(got_rows) != len(want_rows):
        problems.append(f"{len(got_rows)} outputs, the reference has {len(want_rows)}")
    for i, (g, w) in enumerate(zip(got_rows, want_rows, strict=False)):
        where = f"output {i} ({w.get('source_seqs', '')})"
        first = _first_difference(config, g, w)
        if first:
            problems.append(f"first difference: {where}: {first}")
            break
    worst = _largest_float_change(got_rows, want_rows)
    if worst > config.tolerance:
        problems.append(f"largest float change {worst:.2e} (tolerance {config.tolerance:g})")
    return problems


def _first_difference(config: ReplayConfig, g: dict, w: dict) -> str:
    for name in (*EXACT_FIELDS, "recorded_capture_ns"):
        if name in w and g.get(name) != w[name]:
            return f"{name} is {g.get(name)}, reference {w[name]}"
    if set(g["health"]) != set(w["health"]):
        return f"health keys {sorted(g['health'])}, reference {sorted(w['health'])}"
    for key, value in w["health"].items():
        if not np.isclose(g["health"][key], value, atol=config.tolerance, rtol=0, equal_nan=True):
            return f"health[{key!r}] is {g['health'][key]:.6g}, reference {value:.6g}"
    a, b = g["objects"], w["objects"]
    if len(a) != len(b):
        return f"{len(a)} objects, reference {len(b)}"
    for name in DETECTION_DTYPE.names:
        x, y = a[name].astype(float), b[name].astype(float)
        bad = np.flatnonzero(~np.isclose(x, y, atol=config.tolerance, rtol=0, equal_nan=True))
        if len(bad):
            k = bad[0]
            return f"objects[{k}].{name} is {x[k]:.6g}, reference {y[k]:.6g}"
    return ""


def _largest_float_change(got_rows: list[dict], want_rows: list[dict]) -> float:
    worst = 0.0
    for g, w in zip(got_rows, want_rows, strict=False):
        if len(g["objects"]) == len(w["objects"]):
            for name in DETECTION_DTYPE.names:
                diff = np.abs(g["objects"][name].astype(float) - w["objects"][name].astype(float))
                worst = max(worst, float(np.nanmax(diff, initial=0.0)))
        for key in set(g["health"]) & set(w["health"]):
            diff = abs(g["health"][key] - w["health"][key])
            worst = max(worst, 0.0 if np.isnan(diff) else diff)
    return worst


def summary(arrays: dict[str, np.ndarray]) -> str:
    rows = _rows(arrays)
    modes = Counter(r.get("mode", "?").strip("'") for r in rows)
    invalid = sum(r.get("valid") == "False" for r in rows)
    boxes = int(arrays["counts"].sum())
    return f"{len(rows)} outputs {dict(modes)}, {invalid} invalid, {boxes} boxes"


def reference_path(config: ReplayConfig) -> Path:
    return REFERENCE_DIR / f"{config.name}.npz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--update", action="store_true", help="show what changed, then rewrite the references"
    )
    parser.add_argument("--only", nargs="+", metavar="CONFIG", help="these configs only")
    args = parser.parse_args(argv)
    names = [c.name for c in CONFIGS]
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; there are {names}")
    failed = False
    for config in CONFIGS:
        if args.only and config.name not in args.only:
            continue
        got = to_arrays(replay_fusion(config), config.ignore_fields)
        path = reference_path(config)
        want = dict(np.load(path)) if path.exists() else None
        problems = ["no reference yet"] if want is None else compare(config, got, want)
        status = "ok" if not problems else ("changed" if args.update else "FAILED")
        print(f"{config.name}: {status}: {summary(got)}")
        if want is not None and problems:
            print(f"  reference: {summary(want)}")
        for problem in problems:
            print(f"  {problem}")
        if args.update and problems:
            REFERENCE_DIR.mkdir(exist_ok=True)
            np.savez_compressed(path, **got)
            print(f"  wrote {path.relative_to(REPO)}")
        failed |= bool(problems) and not args.update
    if failed:
        print(f"If the changes are intended, regenerate the references with: {REGENERATE}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
