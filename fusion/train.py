"""``fusion train``: fit the fusion model on recordings, simulated drives or the Astyx frames.

One flat loop: Adam with a cosine learning rate, modality dropout (a sample loses its camera or
its radar features, so one set of weights serves the fused, camera-only and radar-only modes),
a validation pass each epoch scored with `fusion.metrics` (mean AP, fused mode), the best
checkpoint kept by that score, early stopping after `patience` epochs without improvement, a
``log.csv`` row per epoch and a tqdm bar with the losses. ``last.pt`` is written every epoch;
``--resume`` continues from it (model, optimiser, schedule, early-stopping state, RNG).

Data: validation is always a different sequence than training, never frames of the same drive.

- ``--astyx [DIR]``: frames split by run (`astyx_split`): the last runs holding 20 % of the
  frames are the test set (only `fusion eval` touches it), the runs before them holding 15 %
  the validation set, the rest training.
- ``--data A.mcap B.mcap --val-data C.mcap``: recordings, one sequence each.
- ``--sim-seeds 11 12 13 --val-seeds 100``: drives simulated in memory with `fusion.sim.simulate`.

Encoded samples are cached under ``--cache-dir`` (default ``runs/cache``), so only the first run
on a data set pays for decoding JPEGs and rasterising radar.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusion.errors import ConfigError
from fusion.model.config import ModelConfig, astyx_config, sim_config
from fusion.model.data import (
    cached_encode,
    collate,
    encode_targets,
    samples_from_astyx,
    samples_from_messages,
)
from fusion.model.detector import load_checkpoint, save_checkpoint
from fusion.model.losses import total_loss
from fusion.model.network import FusionNet

log = logging.getLogger(__name__)

ASTYX_TEST_FRACTION = 0.2
ASTYX_VAL_FRACTION = 0.15
SIM_DURATION_S = 30.0
#: Astyx network input (W, H): the 2048x618 camera at a quarter of its width, aspect kept.
ASTYX_INPUT_SIZE = (512, 160)
SIM_SCENARIOS = ("city", "highway", "night")
#: Simulated drives are 20 Hz; every 4th frame (5 Hz) is plenty for training.
SIM_FRAME_STEP = 4


# --------------------------------------------------------------------------- data sources


def astyx_split(
    root: Path | str,
    test_fraction: float = ASTYX_TEST_FRACTION,
    val_fraction: float = ASTYX_VAL_FRACTION,
) -> dict[str, list[int]]:
    """Frame indices of the ``train``, ``val`` and ``test`` parts, split between whole runs:
    walking back from the last run, runs go to test until it holds `test_fraction` of the frames,
    then to val until it holds `val_fraction`; the rest (the earlier runs) is train."""
    from fusion.datasets.astyx import sequence_ids

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


def recording_messages(path: Path | str):
    """(topic, message) pairs of a recording, in log-time order."""
    from fusion.logs.reader import RecordingReader

    for record in RecordingReader(path).messages():
        yield record.topic, record.decode()


def simulated_messages(seed: int, duration_s: float, scenario: str):
    from fusion.sim import simulate

    return simulate(scenario, seed=seed, duration_s=duration_s)


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
        from fusion.datasets.astyx import default_root

        root = Path(astyx_root) if astyx_root else default_root()
        indices = astyx_split(root)[astyx_part]
        what = f"astyx {root.name} {astyx_part} ({len(indices)} frames, {indices[0]}-{indices[-1]})"
        items = cached_encode(samples_from_astyx(root, indices), cfg, what, cache_dir)
        return items, what
    if source == "recordings":
        items = []
        for path in recordings:
            what = f"recording {Path(path).resolve()} {Path(path).stat().st_mtime_ns}"
            samples = samples_from_messages(recording_messages(path), sequence=Path(path).stem)
            items += cached_encode(samples, cfg, what, cache_dir)
        return items, "recordings " + " ".join(str(p) for p in recordings)
    if source == "sim":
        items, drives = [], []
        for k, seed in enumerate(seeds):
            scenario = sim_scenarios[k % len(sim_scenarios)]
            what = f"sim {scenario} seed {seed} {sim_duration_s:g} s every {SIM_FRAME_STEP}th frame"
            messages = simulated_messages(seed, sim_duration_s, scenario)
            samples = samples_from_messages(messages, f"sim-{scenario}-{seed}", SIM_FRAME_STEP)
            items += cached_encode(samples, cfg, what, cache_dir)
            drives.append(f"{scenario}:{seed}")
        return items, f"sim drives {' '.join(drives)} ({sim_duration_s:g} s each)"
    raise ConfigError(f"unknown data source {source!r}")


# --------------------------------------------------------------------------- training loop


class EarlyStopping:
    """Stop when the validation metric has not improved (by `min_delta`) for `patience` epochs."""

    def __init__(self, patience: int, min_delta: float = 1e-4) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.wait = 0

    def update(self, metric: float) -> bool:
        """Record an epoch's metric; True when it is a new best."""
        if metric > self.best + self.min_delta:
            self.best, self.wait = metric, 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.wait >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state["best"], state["wait"]


@dataclass
class TrainResult:
    best_metric: float
    best_path: Path
    epochs_run: int
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def retarget(items: Sequence[dict], cfg: ModelConfig) -> None:
    """Re-derive the training targets from each cached frame's ground truth (cheap), so target
    settings (range, radius, classes) never need the frames re-encoded."""
    from fusion.evaluate import input_camera

    for it in items:
        it["targets"] = encode_targets(it["gt_boxes"], input_camera(it), cfg)


def point_statistics(items: Sequence[dict]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the 6 raw point fields over the training points."""
    raw = np.concatenate([it["point_features"][:, :6] for it in items] or [np.zeros((1, 6))])
    if not len(raw):
        raw = np.zeros((1, 6))
    std = np.maximum(raw.std(axis=0), 1e-3)
    return tuple(float(v) for v in raw.mean(axis=0)), tuple(float(v) for v in std)


def fit_radar_offset(items: Sequence[dict], default: tuple[float, float]) -> tuple[float, float]:
    """Least-squares (a, b) in: centre range - median range of the radar points inside the
    (0.3 m enlarged) box = a + b * (the box's half extent along the viewing ray), over the
    training boxes with 2 or more points; `default` when there are fewer than 20 such boxes."""
    extents, offsets = [], []
    for it in items:
        p = it["points"]
        px, py, pz = (p[k].astype(np.float64) for k in ("x", "y", "z"))
        for b in it["gt_boxes"]:
            cos, sin = math.cos(b["yaw"]), math.sin(b["yaw"])
            dx, dy = px - b["x"], py - b["y"]
            inside = (
                (np.abs(cos * dx + sin * dy) < b["l"] / 2 + 0.3)
                & (np.abs(-sin * dx + cos * dy) < b["w"] / 2 + 0.3)
                & (np.abs(pz - b["z"]) < b["h"] / 2 + 0.3)
            )
            if inside.sum() < 2:
                continue
            alpha = b["yaw"] - math.atan2(b["y"], b["x"])
            extents.append(abs(b["l"] / 2 * math.cos(alpha)) + abs(b["w"] / 2 * math.sin(alpha)))
            offsets.append(math.hypot(b["x"], b["y"]) - np.median(np.hypot(px[inside], py[inside])))
    if len(offsets) < 20:
        return default
    design = np.stack([np.ones(len(extents)), extents], axis=1)
    a, b = np.linalg.lstsq(design, np.asarray(offsets), rcond=None)[0]
    return float(a), float(b)


def modality_flags(batch: int, cfg: ModelConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 2) camera/radar-present flags with modality dropout: each sample loses its camera with
    probability `camera_dropout`, else its radar with probability `radar_dropout`."""
    r = torch.rand(batch, generator=generator)
    camera = (r >= cfg.camera_dropout).float()
    radar = ((r < cfg.camera_dropout) | (r >= cfg.camera_dropout + cfg.radar_dropout)).float()
    return torch.stack([camera, radar], dim=1)


def photometric_jitter(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random per-sample contrast (x0.75..1.25) and brightness (+-0.25 std) on the normalised
    image: the Astyx frames vary in exposure more than 300 training frames show."""
    b = image.shape[0]
    gain = 0.75 + 0.5 * torch.rand(b, 1, 1, 1, generator=generator)
    bias = 0.5 * torch.rand(b, 1, 1, 1, generator=generator) - 0.25
    return image * gain.to(image.device) + bias.to(image.device)


def learning_rate(step: int, total_steps: int, peak_lr: float, warmup_steps: int = 50) -> float:
    """Linear warm-up to `peak_lr`, then cosine decay to 1 % of it at `total_steps` (a function
    of the step alone, so a resumed run with more epochs just stretches the tail)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def forward_batch(model: FusionNet, batch: dict, present: torch.Tensor) -> dict:
    return model(
        batch["image"],
        batch["point_features"],
        batch["point_cells"],
        batch["point_valid"],
        batch["raster"],
        present.to(batch["image"].device),
    )


def validate(
    model: FusionNet, items: Sequence[dict], classes: Sequence[str], precision: str = "fp32"
) -> dict:
    """Validation scores in fused mode: mean AP (the selection metric) and AP per threshold."""
    from fusion.evaluate import predict, score

    detections, _ = predict(model, items, "fused", precision=precision)
    result = score(items, detections, classes)
    return {
        "mean_ap": result.mean_ap,
        **{f"ap@{t:g}": result.ap_at(t) for t in result.thresholds_m},
    }


def train(
    cfg: ModelConfig,
    train_items: Sequence[dict],
    val_items: Sequence[dict],
    out_dir: Path,
    *,
    epochs: int = 30,
    batch_size: int = 8,
    lr: float = 2e-3,
    patience: int = 6,
    seed: int = 0,
    resume: bool = False,
    device: str = "cpu",
    data_description: str = "",
    max_minutes: float | None = None,
    progress: bool = True,
    bf16: bool = False,
    weight_decay: float = 1e-4,
    point_dropout: float = 0.2,
) -> TrainResult:
    """Train, validating each epoch; returns where the best checkpoint is. `bf16` trains under
    bfloat16 autocast with channels_last (several times faster on CPUs with native bf16).
    `point_dropout` hides that fraction of each frame's radar points from the point encoder."""
    from tqdm import tqdm

    if not train_items or not val_items:
        raise ConfigError(
            f"need training and validation frames, got {len(train_items)} and {len(val_items)}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    retarget(train_items, cfg)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    stopper = EarlyStopping(patience)
    start_epoch = 0
    if resume and last_path.exists():
        model, state = load_checkpoint(last_path)
        cfg = model.cfg
    else:
        cfg.point_mean, cfg.point_std = point_statistics(train_items)
        cfg.radar_refine_offset_m = fit_radar_offset(train_items, cfg.radar_refine_offset_m)
        model, state = FusionNet(cfg), None
    model.to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_items) / batch_size)
    total_steps = epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        stopper.load_state_dict(state["early_stopping"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"] + 1
        log.info("resumed from %s at epoch %d (best %.4f)", last_path, start_epoch, stopper.best)
    classes = cfg.class_names
    log_path = out_dir / "log.csv"
    started = time.monotonic()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs):
        model.train()
        order = torch.randperm(len(train_items), generator=generator).tolist()
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", disable=not progress, leave=False)
        for step in bar:
            chunk = [train_items[i] for i in order[step * batch_size : (step + 1) * batch_size]]
            batch = collate(chunk, device)
            image = photometric_jitter(batch["image"], generator)
            batch["image"] = image.contiguous(memory_format=torch.channels_last) if bf16 else image
            present = modality_flags(len(chunk), cfg, generator)
            keep = torch.rand(batch["point_valid"].shape, generator=generator) >= point_dropout
            batch["point_valid"] = batch["point_valid"] & keep.to(device)
            with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
                out = forward_batch(model, batch, present)
                loss, parts = total_loss(out, batch["targets"], cfg, present.prod(1).to(device))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch * steps_per_epoch + step, total_steps, lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            parts["loss"] = float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{parts['loss']:.3f}", hm=f"{parts['heatmap']:.3f}")
        model.eval()
        metrics = validate(model, val_items, classes, "bf16" if bf16 else "fp32")
        improved = stopper.update(metrics["mean_ap"])
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
            **{f"val_{k}": v for k, v in metrics.items()},
            "seconds": time.monotonic() - started,
        }
        new_log = not log_path.exists() or epoch == 0
        with log_path.open("w" if new_log else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new_log:
                writer.writeheader()
            writer.writerow(row)
        log.info(
            "epoch %d: loss %.3f val mAP %.4f%s",
            epoch,
            row["train_loss"],
            metrics["mean_ap"],
            " (best)" if improved else "",
        )
        extra = {
            "epoch": epoch,
            "best_metric": stopper.best,
            "metrics": metrics,
            "data": data_description,
        }
        if improved:
            save_checkpoint(best_path, model, **extra)
        save_checkpoint(
            last_path,
            model,
            optimizer=optimizer.state_dict(),
            early_stopping=stopper.state_dict(),
            generator=generator.get_state(),
            torch_rng=torch.get_rng_state(),
            **extra,
        )
        if stopper.should_stop:
            log.info("early stop: no improvement for %d epochs", stopper.patience)
            break
        if max_minutes is not None and time.monotonic() - started > 60 * max_minutes:
            log.info("stopping: time budget of %.0f min reached", max_minutes)
            break
    return TrainResult(stopper.best, best_path, epoch + 1, time.monotonic() - started)


def export_weights(checkpoint: Path, out: Path) -> None:
    """A checkpoint's model and config as a small fp16 file (the committed default weights)."""
    model, state = load_checkpoint(checkpoint)
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": state["format"],
            "config": state["config"],
            "model": half,
            "epoch": state.get("epoch"),
            "best_metric": state.get("best_metric"),
            "metrics": state.get("metrics"),
            "data": state.get("data"),
        },
        out,
    )


# --------------------------------------------------------------------------- CLI


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--val-data",
        nargs="+",
        type=Path,
        metavar="REC.mcap",
        help="validation recordings (with --data)",
    )
    parser.add_argument(
        "--val-seeds",
        nargs="+",
        type=int,
        default=[100],
        help="validation drive seeds (with --sim-seeds)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/train"), help="output directory")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="Adam L2 penalty")
    parser.add_argument(
        "--camera-dropout",
        type=float,
        default=None,
        help="chance a training sample loses its camera (default: config)",
    )
    parser.add_argument(
        "--radar-dropout",
        type=float,
        default=None,
        help="chance a training sample loses its radar (default: config)",
    )
    parser.add_argument("--patience", type=int, default=6, help="early-stopping epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        default=ASTYX_INPUT_SIZE,
        metavar=("W", "H"),
        help="network input size for --astyx",
    )
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="W.pt",
        help="also write the best model as a small fp16 weights file",
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


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.astyx is not None:
        cfg = astyx_config(input_w=args.input_size[0], input_h=args.input_size[1])
    else:
        cfg = sim_config()
    sets = data_sets(args, cfg, ("train", "val"))
    (train_items, train_what), (val_items, val_what) = sets["train"], sets["val"]
    log.info(
        "train: %s, %d frames; val: %s, %d frames",
        train_what,
        len(train_items),
        val_what,
        len(val_items),
    )
    cfg.extra = {"train": train_what, "val": val_what}
    if args.camera_dropout is not None:
        cfg.camera_dropout = args.camera_dropout
    if args.radar_dropout is not None:
        cfg.radar_dropout = args.radar_dropout
    result = train(
        cfg,
        train_items,
        val_items,
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        data_description=f"train: {train_what}; val: {val_what}",
        max_minutes=args.max_minutes,
        weight_decay=args.weight_decay,
        bf16=resolve_precision(args.precision) == "bf16",
    )
    print(
        f"best val mAP {result.best_metric:.4f} -> {result.best_path} "
        f"({result.epochs_run} epochs, {result.seconds / 60:.1f} min)"
    )
    if args.export is not None:
        export_weights(result.best_path, args.export)
        print(f"exported {args.export} ({args.export.stat().st_size / 1e6:.1f} MB)")
    return 0
