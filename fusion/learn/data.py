"""The data sets training and evaluation share, and the arguments that name them.

Validation is always a different sequence than training, never frames of the same drive.

- ``--astyx [DIR]``: frames split by run (`astyx_split`): the last runs holding 20 % of the
  frames are the test set (only `fusion eval` touches it), the runs before them holding 15 %
  the validation set, the rest training.
- ``--data A.mcap B.mcap --val-data C.mcap``: recordings, one sequence each.
- ``--sim-seeds 11 12 13 --val-seeds 100``: drives simulated in memory with `fusion.sim.simulate`.

Encoded samples are cached under ``--cache-dir`` (default ``runs/cache``), so only the first run
on a data set pays for decoding JPEGs and rasterising radar. `input_camera` gives the camera an
encoded frame was made with; `resolve_precision` turns ``--precision auto`` into what this CPU
runs fastest.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusion.datasets.astyx import default_root, sequence_ids
from fusion.errors import ConfigError
from fusion.logs.reader import recorded_messages
from fusion.model.config import ModelConfig
from fusion.model.data import cached_encode, samples_from_astyx, samples_from_messages
from fusion.perception.geometry import CameraModel
from fusion.sim import simulate

ASTYX_TEST_FRACTION = 0.2
ASTYX_VAL_FRACTION = 0.15
SIM_DURATION_S = 30.0
SIM_SCENARIOS = ("city", "highway", "night")
#: Simulated drives are 20 Hz; every 4th frame (5 Hz) is plenty for training.
SIM_FRAME_STEP = 4


def astyx_split(
    root: Path | str,
    test_fraction: float = ASTYX_TEST_FRACTION,
    val_fraction: float = ASTYX_VAL_FRACTION,
) -> dict[str, list[int]]:
    """Frame indices of the ``train``, ``val`` and ``test`` parts, split between whole runs:
    walking back from the last run, runs go to test until it holds `test_fraction` of the frames,
    then to val until it holds `val_fraction`; the rest (the earlier runs) is train."""
    runs = sequence_ids(root)
    by_run: dict[int, list[int]] = {}
    for index, run in sorted(runs.items()):
        by_run.setdefault(run, []).append(index)
    total = len(runs)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for run in sorted(by_run, reverse=True):
        if len(parts["test"]) < test_fraction * total:
            part = "test"
        elif len(parts["val"]) < val_fraction * total:
            part = "val"
        else:
            part = "train"
        parts[part] = by_run[run] + parts[part]
    return parts


def load_items(
    source: str,
    cfg: ModelConfig,
    cache_dir: Path | None,
    *,
    astyx_root: Path | None = None,
    astyx_part: str = "train",
    recordings: Sequence[Path] = (),
    seeds: Sequence[int] = (),
    sim_duration_s: float = SIM_DURATION_S,
    sim_scenarios: Sequence[str] = SIM_SCENARIOS,
) -> tuple[list[dict], str]:
    """Encoded samples of one data set and a line describing it (kept in checkpoints)."""
    if source == "astyx":
        root = Path(astyx_root) if astyx_root else default_root()
        indices = astyx_split(root)[astyx_part]
        what = f"astyx {root.name} {astyx_part} ({len(indices)} frames, {indices[0]}-{indices[-1]})"
        items = cached_encode(samples_from_astyx(root, indices), cfg, what, cache_dir)
        return items, what
    if source == "recordings":
        items = []
        for path in recordings:
            what = f"recording {Path(path).resolve()} {Path(path).stat().st_mtime_ns}"
            samples = samples_from_messages(recorded_messages(path), sequence=Path(path).stem)
            items += cached_encode(samples, cfg, what, cache_dir)
        return items, "recordings " + " ".join(str(p) for p in recordings)
    if source == "sim":
        items, drives = [], []
        for k, seed in enumerate(seeds):
            scenario = sim_scenarios[k % len(sim_scenarios)]
            what = f"sim {scenario} seed {seed} {sim_duration_s:g} s every {SIM_FRAME_STEP}th frame"
            messages = simulate(scenario, seed=seed, duration_s=sim_duration_s)
            samples = samples_from_messages(messages, f"sim-{scenario}-{seed}", SIM_FRAME_STEP)
            items += cached_encode(samples, cfg, what, cache_dir)
            drives.append(f"{scenario}:{seed}")
        return items, f"sim drives {' '.join(drives)} ({sim_duration_s:g} s each)"
    raise ConfigError(f"unknown data source {source!r}")


def input_camera(item: dict) -> CameraModel:
    """The camera at the network's input size that an encoded frame was made with."""
    h, w = item["image"].shape[1:]
    return CameraModel(item["K"], w, h, item["ref_to_cam"], np.zeros(5))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", type=Path, metavar="REC.mcap", help="recordings")
    src.add_argument(
        "--astyx",
        nargs="?",
        const="",
        metavar="DIR",
        help="Astyx HiRes2019 directory (default: ../shared/realdata/astyx_hires2019)",
    )
    src.add_argument(
        "--sim-seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="simulate drives with these seeds in memory",
    )
    parser.add_argument(
        "--sim-duration",
        type=float,
        default=SIM_DURATION_S,
        metavar="S",
        help="seconds per simulated drive",
    )
    parser.add_argument(
        "--sim-scenarios",
        nargs="+",
        default=list(SIM_SCENARIOS),
        help="scenarios the sim seeds cycle through",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("runs/cache"),
        help="where encoded samples are cached ('' = no cache)",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 autocast where the CPU runs it natively, else fp32",
    )


def data_sets(args: argparse.Namespace, cfg: ModelConfig, parts: Sequence[str]) -> dict:
    """The requested parts (train / val / test) of the data set the arguments name."""
    cache = args.cache_dir if str(args.cache_dir) else None
    common = {"sim_duration_s": args.sim_duration, "sim_scenarios": args.sim_scenarios}
    out = {}
    for part in parts:
        if args.astyx is not None:
            root = Path(args.astyx) if args.astyx else None
            out[part] = load_items("astyx", cfg, cache, astyx_root=root, astyx_part=part, **common)
        elif args.data is not None:
            paths = args.data if part != "val" else (getattr(args, "val_data", None) or [])
            if not paths:
                raise ConfigError("--data needs --val-data for validation (a different drive)")
            out[part] = load_items("recordings", cfg, cache, recordings=paths, **common)
        else:
            seeds = args.sim_seeds if part != "val" else getattr(args, "val_seeds", args.sim_seeds)
            out[part] = load_items("sim", cfg, cache, seeds=seeds, **common)
    return out


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where the CPU has native bfloat16, else ``fp32``."""
    if precision != "auto":
        return precision
    from fusion.model.detector import cpu_has_bf16

    return "bf16" if cpu_has_bf16() else "fp32"
