"""Training losses: CenterNet's penalty-reduced focal loss on the BEV heatmaps, L1 on the box
regressions at the object centres, and the VAE's reconstruction + beta x KL on frames that have
both sensors. `total_loss` returns the weighted sum and each part for logging."""

from __future__ import annotations

import torch

from fusion.model.config import ModelConfig


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of peaks (cells == 1).
    `logits` and `target` (Gaussian splats, 1 at centres) have the same shape."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    peak = target.eq(1).float()
    pos = -torch.log(p) * (1 - p) ** alpha * peak
    neg = -torch.log(1 - p) * p**alpha * (1 - target) ** beta * (1 - peak)
    return (pos.sum() + neg.sum()) / peak.sum().clamp(min=1.0)


def gather(feature_map: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, rows, cols) map, (B, K) flat cell indices -> (B, K, C) values at those cells."""
    b, c = feature_map.shape[:2]
    flat = feature_map.reshape(b, c, -1).float()
    return flat.gather(2, index.unsqueeze(1).expand(b, c, index.shape[1])).transpose(1, 2)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 over the slots where `mask` (B, K) is 1; `pred`, `target` (B, K, C)."""
    m = mask.unsqueeze(-1)
    return ((pred - target).abs() * m).sum() / (m.sum() * pred.shape[-1]).clamp(min=1.0)


def total_loss(
    out: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    present: torch.Tensor,
    cfg: ModelConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of every part, and each part as a float."""
    parts = {"heatmap": focal_loss(out["heatmap"], targets["heatmap"])}
    index, mask = targets["index"], targets["mask"]
    for name, weight in (
        ("offset", cfg.offset_weight),
        ("z", cfg.z_weight),
        ("log_dims", cfg.dims_weight),
        ("yaw", cfg.yaw_weight),
    ):
        parts[name] = weight * masked_l1(gather(out[name], index), targets[name], mask)
    velocity_mask = mask * targets["velocity_mask"]
    parts["velocity"] = cfg.velocity_weight * masked_l1(
        gather(out["velocity"], index), targets["velocity"], velocity_mask
    )
    both = (present[:, 0] > 0) & (present[:, 1] > 0)
    if both.sum() > 1:
        parts["vae"] = cfg.vae_weight * out["vae_score"][both].mean()
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}
