"""Training losses: CenterNet's penalty-reduced focal loss on the BEV heatmaps, L1 on the box
regressions at the object centres, and the VAE's reconstruction + beta x KL on frames that have
both sensors. `total_loss` returns the weighted sum and each part for logging.

Every part is a sum over the batch divided by a count over the batch. In a data-parallel run
(`fusion.model.replicas`) each process divides its shard's sum by the count over the global
batch, times the number of processes, so that DDP's mean of the gradients is the gradient of the
one-process loss."""

from __future__ import annotations

import torch

from fusion.model.config import ModelConfig
from fusion.model.replicas import LOCAL, Replicas

#: The parts `total_loss` reports, in order.
LOSS_PARTS = ("heatmap", "offset", "z", "log_dims", "yaw", "velocity", "vae")


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
    replicas: Replicas = LOCAL,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of peaks (cells == 1).
    `logits` and `target` (Gaussian splats, 1 at centres) have the same shape."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    peak = target.eq(1).float()
    pos = -torch.log(p) * (1 - p) ** alpha * peak
    neg = -torch.log(1 - p) * p**alpha * (1 - target) ** beta * (1 - peak)
    return (pos.sum() + neg.sum()) * replicas.size / replicas.sum(peak.sum()).clamp(min=1.0)


def gather(feature_map: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, rows, cols) map, (B, K) flat cell indices -> (B, K, C) values at those cells."""
    b, c = feature_map.shape[:2]
    flat = feature_map.reshape(b, c, -1).float()
    return flat.gather(2, index.unsqueeze(1).expand(b, c, index.shape[1])).transpose(1, 2)


def masked_l1(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, replicas: Replicas = LOCAL
) -> torch.Tensor:
    """Mean L1 over the slots where `mask` (B, K) is 1; `pred`, `target` (B, K, C)."""
    m = mask.unsqueeze(-1)
    slots = replicas.sum(m.sum() * pred.shape[-1]).clamp(min=1.0)
    return ((pred - target).abs() * m).sum() * replicas.size / slots


def total_loss(
    out: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    present: torch.Tensor,
    cfg: ModelConfig,
    replicas: Replicas = LOCAL,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of every part, and each part (`LOSS_PARTS`) as a float, of the global
    batch: the same figures on every process of a data-parallel run."""
    parts = {"heatmap": focal_loss(out["heatmap"], targets["heatmap"], replicas=replicas)}
    index, mask = targets["index"], targets["mask"]
    for name, weight in (
        ("offset", cfg.offset_weight),
        ("z", cfg.z_weight),
        ("log_dims", cfg.dims_weight),
        ("yaw", cfg.yaw_weight),
    ):
        parts[name] = weight * masked_l1(gather(out[name], index), targets[name], mask, replicas)
    velocity_mask = mask * targets["velocity_mask"]
    parts["velocity"] = cfg.velocity_weight * masked_l1(
        gather(out["velocity"], index), targets["velocity"], velocity_mask, replicas
    )
    both = (present[:, 0] > 0) & (present[:, 1] > 0)
    n_both = replicas.sum(both.sum())
    # The VAE ran only where two frames or more had both sensors (its batch norm needs two);
    # otherwise its part is 0, so that every step reports the same parts.
    parts["vae"] = cfg.vae_weight * (
        out["vae_score"][both].sum() * replicas.size / n_both
        if n_both > 1
        else out["vae_score"][:0].sum()
    )
    total = sum(parts.values())
    logged = torch.stack([v.detach().float() for v in parts.values()])
    logged = replicas.sum(logged) / replicas.size
    return total, dict(zip(parts, logged.tolist(), strict=True))
