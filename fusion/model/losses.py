"""Training losses: penalty-reduced focal loss on the heatmaps (CenterNet), L1 on the box
regressions at the object centres, cross-entropy on the yaw bin, and the VAE's
reconstruction + beta * KL. `total_loss` returns the weighted sum and each part for logging."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)

from fusion.model.config import ModelConfig


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of peaks (cells == 1).

    `logits` and `target` (Gaussian splats, 1 at centres) have the same shape."""
    logits = logits.float()
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    peak = target.eq(1).float()
    pos = -torch.log(p) * (1 - p) ** alpha * peak
    neg = -torch.log(1 - p) * p**alpha * (1 - target) ** beta * (1 - peak)
    return (pos.sum() + neg.sum()) / peak.sum().clamp(min=1.0)


def gather(feature_map: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) map, (B, K) flat cell indices -> (B, K, C) values at those cells."""
    b, c = feature_map.shape[:2]
    flat = feature_map.reshape(b, c, -1).float()
    return flat.gather(2, index.unsqueeze(1).expand(b, c, index.shape[1])).transpose(1, 2)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 over the objects where `mask` (B, K) is 1, averaged per object."""
    if pred.dim() == 3 and target.dim() == 2:
        target = target.unsqueeze(-1)
    m = mask.unsqueeze(-1) if pred.dim() == 3 else mask
    per = (pred - target).abs() * m
    return per.sum() / (m.sum() * (pred.shape[-1] if pred.dim() == 3 else 1)).clamp(min=1.0)


def total_loss(
    out: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    cfg: ModelConfig,
    vae_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of all losses; `vae_mask` (B,) selects the samples the VAE learns from
    (those with both modalities, so a dropped sensor stays unusual to it)."""
    index, mask = targets["index"], targets["mask"]
    parts = {"heatmap": focal_loss(out["heatmap"], targets["heatmap"].float())}
    parts["offset"] = masked_l1(gather(out["offset"], index), targets["offset"], mask)
    parts["depth"] = masked_l1(gather(out["log_depth"], index), targets["log_depth"], mask)
    parts["dims"] = masked_l1(gather(out["log_dims"], index), targets["log_dims"], mask)
    bin_logits = gather(out["yaw_bin"], index)  # (B, K, bins)
    ce = F.cross_entropy(
        bin_logits.reshape(-1, cfg.yaw_bins), targets["yaw_bin"].reshape(-1), reduction="none"
    )
    parts["yaw_bin"] = (ce * mask.reshape(-1)).sum() / mask.sum().clamp(min=1.0)
    residual = gather(out["yaw_residual"], index).gather(2, targets["yaw_bin"].unsqueeze(-1))
    parts["yaw_residual"] = masked_l1(residual.squeeze(-1), targets["yaw_residual"], mask)
    parts["velocity"] = masked_l1(
        gather(out["velocity"], index), targets["velocity"], mask * targets["velocity_mask"]
    )
    vae = out["health_recon"] + cfg.vae_beta * out["health_kl"]
    if vae_mask is not None:
        vae = (vae * vae_mask).sum() / vae_mask.sum().clamp(min=1.0)
    parts["vae"] = vae.mean() if vae.dim() else vae
    weights = {
        "heatmap": 1.0,
        "offset": cfg.offset_weight,
        "depth": cfg.depth_weight,
        "dims": cfg.dims_weight,
        "yaw_bin": cfg.yaw_bin_weight,
        "yaw_residual": cfg.yaw_residual_weight,
        "velocity": cfg.velocity_weight,
        "vae": cfg.vae_weight,
    }
    loss = sum(weights[k] * v for k, v in parts.items())
    return loss, {k: float(v.detach()) for k, v in parts.items()}
