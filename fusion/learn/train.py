"""Training: fit the fusion model on encoded frames (`fusion.learn.data`), keep the best.

One flat loop: Adam with a cosine learning rate, modality dropout (a sample loses its camera or
its radar features, so one set of weights serves the fused, camera-only and radar-only modes),
a validation pass each epoch scored with `fusion.learn.metrics` (mean AP, fused mode), the best
checkpoint kept by that score, early stopping after `patience` epochs without improvement, a
``log.csv`` row per epoch and a tqdm bar with the losses. ``last.pt`` is written every epoch;
``--resume`` continues from it (model, optimiser, schedule, early-stopping state, RNG).
"""

from __future__ import annotations

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
from fusion.learn.data import input_camera
from fusion.learn.evaluate import predict, score
from fusion.model.config import ModelConfig
from fusion.model.data import collate, encode_targets
from fusion.model.detector import load_checkpoint, save_checkpoint
from fusion.model.losses import total_loss
from fusion.model.network import FusionNet

log = logging.getLogger(__name__)


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
