"""Training: fit the fusion model on a `FeatureSet`, keep the best, calibrate its health score.

One flat loop, nanoGPT-style, every setting in a `TrainConfig`: AdamW with a one-cycle learning
rate, an exponential moving average (EMA) of the weights that is what gets validated and kept,
modality dropout (a sample loses its camera or its radar, so one set of weights serves the fused,
camera-only and radar-only modes), augmentations consistent across sensors
(`fusion.learn.augment`), a validation pass each epoch (fused mean AP, `fusion.learn.evaluate`),
the best EMA weights kept as ``best.safetensors``, early stopping after ``patience`` epochs
without improvement, a ``log.csv`` row per epoch, a ``steps.csv`` row of losses per step and a
tqdm bar. ``last.safetensors`` holds the
whole training state every epoch; ``resume`` continues from it. At the end the health score is
calibrated on the validation frames (`fusion.model.health.calibrate`) and written into the best
weights' config, with the train config, data, code version and seed in their header.

Every random draw of a sample (its augmentations, which sensor modality dropout takes away, the
VAE's noise) comes from a generator seeded by (seed, epoch, the sample's place in the epoch), and
each epoch's order from (seed, epoch): what a sample gets does not depend on the batch it is in
or the process that holds it. So under torchrun (`fusion.learn.distributed`) each process takes
its share of every global batch and the run gives the one-process result within float tolerance;
only the first process validates and writes files.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion.errors import ConfigError
from fusion.learn import distributed
from fusion.learn.batches import collate, modality_flags, sample
from fusion.learn.config import TrainConfig
from fusion.learn.evaluate import predict, score
from fusion.learn.features import FeatureSet
from fusion.model.config import ModelConfig
from fusion.model.health import calibrate
from fusion.model.losses import total_loss
from fusion.model.network import FusionNet
from fusion.model.replicas import Replicas, synchronise_batch_norms
from fusion.model.weights import save_weights

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
    history: list[dict[str, float]]


def fit_ground_plane(features: FeatureSet, cfg: ModelConfig) -> tuple[float, float]:
    """Least-squares plane z = a + b * x through the centres of the training boxes of the
    model's classes (a radar pitched down sees the road rise with range); (0, 0) with fewer
    than 10 boxes."""
    from fusion.wire.messages import CLASS_NAMES

    wanted = [CLASS_NAMES.index(n) for n in cfg.class_names]
    boxes = [f.boxes[np.isin(f.boxes["class_id"], wanted)] for f in features.frames]
    joined = np.concatenate(boxes) if boxes else np.zeros(0)
    if len(joined) < 10:
        return (0.0, 0.0)
    design = np.stack([np.ones(len(joined)), joined["x"].astype(np.float64)], axis=1)
    a, b = np.linalg.lstsq(design, joined["z"].astype(np.float64), rcond=None)[0]
    return float(a), float(b)


def learning_rate(step: int, total_steps: int, peak_lr: float) -> float:
    """One cycle: linear warm-up over the first 10 % of steps to `peak_lr`, then cosine down to
    1 % of it (a function of the step alone, so a resumed run continues the same curve)."""
    warmup = max(1, total_steps // 10)
    if step < warmup:
        return peak_lr * (0.04 + 0.96 * step / warmup)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return peak_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def code_version() -> str:
    """``git describe`` of the checkout the code runs from ('unknown' outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available; use cpu/auto")
    return torch.device(device)


@torch.no_grad()
def update_ema(ema: FusionNet, model: FusionNet, decay: float) -> None:
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m.detach(), alpha=1 - decay)
        else:
            e.copy_(m)


def validate(model: FusionNet, val: FeatureSet) -> dict[str, float]:
    """Fused-mode validation scores: mean AP (the selection metric) and AP per threshold."""
    result = score(val.frames, predict(model, val, "fused")[0], model.cfg.class_names)
    return {
        "mean_ap": result.mean_ap,
        **{f"ap@{t:g}": result.ap_at(t) for t in result.thresholds_m},
    }


class _FromEarly(nn.Module):
    """`FusionNet.from_early` as a module's forward (what DDP wraps and hooks)."""

    def __init__(self, net: FusionNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: dict, present: torch.Tensor, noise: torch.Tensor) -> dict:
        return self.net.from_early(
            batch["f8"], batch["f16"], batch["f32"], batch["raster"], batch["grid"], present, noise
        )


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of every random draw for the sample at `position` of `epoch`'s order."""
    return np.random.default_rng([seed, epoch, position])


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training frames' order in `epoch`."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _shard(chunk: np.ndarray, replicas: Replicas) -> tuple[np.ndarray, np.ndarray]:
    """This process's share of a global batch: (positions in the batch, frame indices)."""
    positions = np.array_split(np.arange(len(chunk)), replicas.size)[replicas.rank]
    return positions, chunk[positions]


def train(
    cfg: ModelConfig,
    tcfg: TrainConfig,
    train_set: FeatureSet,
    val_set: FeatureSet,
    *,
    resume: bool = False,
) -> TrainResult:
    """Train, validating each epoch; returns where the best weights are (see the module
    docstring). Under torchrun every process calls it with the same arguments."""
    from tqdm import tqdm

    if not len(train_set) or not len(val_set):
        raise ConfigError(
            f"need training and validation frames, got {len(train_set)} and {len(val_set)}"
        )
    replicas = Replicas.current()
    main = replicas.rank == 0
    out_dir = Path(tcfg.out)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tcfg.seed)
    device = distributed.device_for(replicas, resolve_device(tcfg.device))
    if device.type == "cpu":
        torch.set_num_threads(tcfg.threads)
    last_path, best_path = out_dir / "last.safetensors", out_dir / "best.safetensors"
    resuming = resume and last_path.exists()
    if resuming:
        cfg = training_state_config(last_path)
    else:
        cfg = copy.deepcopy(cfg)
        cfg.ground_plane = fit_ground_plane(train_set, cfg)
    model = FusionNet(cfg).to(device)
    ema = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    stopper = EarlyStopping(tcfg.patience)
    step, start_epoch, history = 0, 0, []
    if resuming:
        state = load_training_state(last_path, model, ema, optimizer)
        stopper.load_state_dict(state["early_stopping"])
        step, start_epoch, history = state["step"], state["epoch"] + 1, state["history"]
        log.info("resumed from %s at epoch %d (best %.4f)", last_path, start_epoch, stopper.best)
    net: nn.Module = _FromEarly(model)
    if replicas.distributed:
        # The frozen backbone does not run in training (its maps are cached).
        synchronise_batch_norms(model, skip=("image.early",))
        net = nn.parallel.DistributedDataParallel(
            net,
            device_ids=[device.index] if device.type == "cuda" else None,
            # the VAE sits out the batches with fewer than two frames that have both sensors
            find_unused_parameters=True,
        )
    steps_per_epoch = math.ceil(len(train_set) / tcfg.batch_size)
    total_steps = tcfg.epochs * steps_per_epoch
    metadata = {
        "train_config": tcfg.to_json(),
        "data": json.dumps({"train": train_set.description, "val": val_set.description}),
        "code_version": code_version(),
        "seed": str(tcfg.seed),
        "processes": str(replicas.size),
    }
    started = time.monotonic()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, tcfg.epochs):
        model.train()
        order = epoch_order(tcfg.seed, epoch, len(train_set))
        sums: dict[str, float] = {}
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}",
            disable=not (tcfg.progress and main),
            leave=False,
        )
        for k in bar:
            chunk = order[k * tcfg.batch_size : (k + 1) * tcfg.batch_size]
            if len(chunk) < replicas.size:  # a last batch too small to share: every process
                log.warning("epoch %d: last %d frame(s) left out", epoch, len(chunk))  # skips
                continue
            samples, present, noise = [], [], []
            for position, index in zip(*_shard(chunk, replicas), strict=True):
                rng = sample_rng(tcfg.seed, epoch, k * tcfg.batch_size + int(position))
                samples.append(sample(train_set, int(index), cfg, tcfg, rng))
                present.append(modality_flags(1, cfg, rng))
                noise.append(torch.from_numpy(rng.standard_normal(cfg.vae_latent)))
            batch = collate(samples, device)
            flags = torch.cat(present).to(device)
            out = net(batch, flags, torch.stack(noise).float().to(device))
            loss, parts = total_loss(out, batch["targets"], flags, cfg, replicas)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, tcfg.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            update_ema(ema, model, min(tcfg.ema_decay, (1 + step) / (10 + step)))
            if main:
                _append_csv(out_dir / "steps.csv", {"epoch": epoch, "step": step} | parts)
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.set_postfix(loss=f"{sum(parts.values()):.3f}")
        scores = validate(ema, val_set) if main else {}
        out_of_time = tcfg.max_minutes and time.monotonic() - started > tcfg.max_minutes * 60
        scores, out_of_time = distributed.from_first(replicas, (scores, bool(out_of_time)))
        row = {
            "epoch": epoch,
            "seconds": round(time.monotonic() - started, 1),
            **{f"loss_{k}": v / steps_per_epoch for k, v in sums.items()},
            **{f"val_{k}": v for k, v in scores.items()},
        }
        history.append(row)
        improved = stopper.update(scores["mean_ap"])
        if main:
            _append_csv(out_dir / "log.csv", row)
            if improved:
                save_weights(best_path, ema, **metadata, best_metric=scores, epoch=epoch)
            save_training_state(
                last_path, model, ema, optimizer, epoch, step, stopper, history, metadata
            )
            log.info(
                "epoch %d: val mAP %.4f%s (%.0f s)",
                epoch,
                scores["mean_ap"],
                " (best)" if improved else "",
                time.monotonic() - started,
            )
        if stopper.should_stop or out_of_time:
            break
    if main:
        save_weights(out_dir / "final.safetensors", ema, **metadata, epoch=epoch)
        calibrate_health(best_path, val_set, device)
    distributed.barrier(replicas)
    return TrainResult(stopper.best, best_path, epoch + 1, time.monotonic() - started, history)


def calibrate_health(weights_path: Path, val_set: FeatureSet, device: torch.device) -> Path:
    """Measure the health cues on the clean validation frames and store their statistics and
    the flagging threshold in the weights' config."""
    from fusion.model.weights import load_weights

    model, metadata = load_weights(weights_path)
    model.to(device)
    _, reports = predict(model, val_set, "fused")
    model.cfg.health, model.cfg.health_threshold = calibrate(reports)
    extra = {k: v for k, v in metadata.items() if k not in ("format", "config", "backbone_sha256")}
    save_weights(weights_path, model, **extra)
    return weights_path


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


# --------------------------------------------------------------------------- training state


def save_training_state(
    path: Path,
    model: FusionNet,
    ema: FusionNet,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    stopper: EarlyStopping,
    history: list[dict],
    metadata: dict[str, str],
) -> None:
    """Everything `resume` needs, as safetensors tensors plus a JSON header (no pickle)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    tensors["torch_rng"] = torch.get_rng_state()
    header = {
        "config": model.cfg.to_json(),
        "param_groups": json.dumps(optim["param_groups"]),
        "epoch": str(epoch),
        "step": str(step),
        "early_stopping": json.dumps(stopper.state_dict()),
        "history": json.dumps(history),
        **metadata,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)


def training_state_config(path: Path) -> ModelConfig:
    """The model config a training state file was saved with."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return ModelConfig.from_dict(json.loads(f.metadata()["config"]))


def load_training_state(
    path: Path, model: FusionNet, ema: FusionNet, optimizer: torch.optim.Optimizer
) -> dict:
    """Restore `save_training_state`'s file into the given objects; returns the rest."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(header["param_groups"])})
    torch.set_rng_state(tensors["torch_rng"])
    return {
        "epoch": int(header["epoch"]),
        "step": int(header["step"]),
        "early_stopping": json.loads(header["early_stopping"]),
        "history": json.loads(header["history"]),
    }
