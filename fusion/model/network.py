"""The fusion network, top to bottom: image branch, radar encoder, gated fusion, CenterNet head,
and the VAE whose score says how unlike the training data an input is.

Shapes use B batch, N radar points, H x W the input image, h x w = H/8 x W/8 the head's grid.
The network takes tensors made by `fusion.model.data` and returns raw head maps; `fusion.model.
decode` turns them into boxes, `fusion.model.losses` into a loss.

Modes: ``fused`` uses both inputs; ``camera_only`` zeroes the radar features and ``radar_only``
the image features (and skips the backbone). Two constant "modality present" channels tell the
fusion layers which inputs are there; modality dropout in training zeroes one input per sample
so the same weights serve all three modes (the fusion node's degraded modes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)
from torch import nn

from fusion.model.config import ModelConfig

MODES = ("fused", "camera_only", "radar_only")

#: Per-point features fed to the point MLP: the 6 normalised RADAR_POINT_DTYPE fields, log depth
#: along the camera axis, and the point's sub-cell position (u, v) inside its grid cell.
POINT_FEATURES = 9


def conv_bn_act(c_in: int, c_out: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.Hardswish(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expand, kxk depthwise, 1x1 project, residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_act(c_in, hidden, 1))
        layers += [
            conv_bn_act(hidden, hidden, kernel, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class ImageBranch(nn.Module):
    """MobileNetV3-like backbone (strides 2..32) and a top-down pyramid ending at stride 8."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, cfg.stem_channels, 3, 2)
        stages = []
        c_in = cfg.stem_channels
        for c_out, expansion, kernel, stride, blocks in cfg.backbone_stages:
            layers = []
            for i in range(blocks):
                layers.append(
                    InvertedResidual(c_in, c_out, expansion, kernel, stride if i == 0 else 1)
                )
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        p = cfg.pyramid_channels
        c8, c16, c32 = (s[0] for s in cfg.backbone_stages[2:5])
        self.lateral8 = nn.Conv2d(c8, p, 1)
        self.lateral16 = nn.Conv2d(c16, p, 1)
        self.lateral32 = nn.Conv2d(c32, p, 1)
        self.smooth = nn.Sequential(conv_bn_act(p, p, 3, groups=p), conv_bn_act(p, p, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)  # (B, 16, H/2, W/2)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        f8, f16, f32 = features[2], features[3], features[4]  # strides 8, 16, 32
        p32 = self.lateral32(f32)
        p16 = self.lateral16(f16) + F.interpolate(p32, size=f16.shape[-2:], mode="nearest")
        p8 = self.lateral8(f8) + F.interpolate(p16, size=f8.shape[-2:], mode="nearest")
        return self.smooth(p8)  # (B, P, h, w)


class RadarEncoder(nn.Module):
    """PointNet-style shared MLP per point, max-pooled into the grid cell each point projects to,
    concatenated with the radar raster channels, then two 3x3 convolutions (one dilated, so a
    car's few points reach its centre cell)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = POINT_FEATURES
        for c_out in cfg.point_mlp_channels:
            layers += [nn.Linear(c_in, c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.point_mlp = nn.Sequential(*layers)
        c_grid = c_in + 1 + cfg.radar_raster_channels  # + log point count
        r = cfg.radar_channels
        self.convs = nn.Sequential(
            conv_bn_act(c_grid, r, 3),
            nn.Conv2d(r, r, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(r),
            nn.Hardswish(inplace=True),
        )
        self.grid = (cfg.grid_h, cfg.grid_w)
        # raw point fields from the config; log depth around 15 m; sub-cell position in [0, 1)
        mean = (*cfg.point_mean, 2.7, 0.5, 0.5)
        std = (*cfg.point_std, 0.7, 0.3, 0.3)
        self.register_buffer("point_mean", torch.tensor(mean), persistent=False)
        self.register_buffer("point_std", torch.tensor(std), persistent=False)

    def forward(
        self,
        point_features: torch.Tensor,  # (B, N, POINT_FEATURES)
        point_cells: torch.Tensor,  # (B, N) int64 flat cell index v * w + u; padding any value
        point_valid: torch.Tensor,  # (B, N) bool
        raster: torch.Tensor,  # (B, C_raster, h, w)
    ) -> torch.Tensor:
        h, w = self.grid
        batch = point_features.shape[0]
        normalised = (point_features - self.point_mean) / self.point_std
        per_point = self.point_mlp(normalised) * point_valid.unsqueeze(-1)  # (B, N, C) >= 0
        per_point = per_point.transpose(1, 2)  # (B, C, N)
        cells = point_cells.clamp(0, h * w - 1)
        grid = per_point.new_zeros(batch, per_point.shape[1], h * w)
        grid = grid.scatter_reduce(2, cells.unsqueeze(1).expand_as(per_point), per_point, "amax")
        count = per_point.new_zeros(batch, 1, h * w)
        count = count.scatter_add(2, cells.unsqueeze(1), point_valid.unsqueeze(1).to(count.dtype))
        grid = torch.cat([grid, torch.log1p(count)], dim=1).view(batch, -1, h, w)
        if raster.shape[1]:
            grid = torch.cat([grid, raster.to(grid.dtype)], dim=1)
        return self.convs(grid)  # (B, R, h, w)


class GatedFusion(nn.Module):
    """Concatenate image and radar features; a learned sigmoid gate scales the radar channels
    per cell (so noisy radar can be turned down where the image disagrees)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        p, r = cfg.pyramid_channels, cfg.radar_channels
        self.gate = nn.Conv2d(p + r + 2, r, 1)
        self.mix = nn.Sequential(conv_bn_act(p + r + 2, cfg.head_channels, 3))

    def forward(
        self, image_features: torch.Tensor, radar_features: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        b, _, h, w = image_features.shape
        flags = present.view(b, 2, 1, 1).expand(b, 2, h, w).to(image_features.dtype)
        stacked = torch.cat([image_features, radar_features, flags], dim=1)
        gated = radar_features * torch.sigmoid(self.gate(stacked))
        return self.mix(torch.cat([image_features, gated, flags], dim=1))  # (B, head, h, w)


class CenterHead(nn.Module):
    """Class heatmaps and the box regressions at each cell (CenterNet)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.head_channels
        self.heatmap = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, cfg.num_classes, 1)
        )
        # offset 2, log depth 1, log dims 3, yaw bin logits + residuals 2*bins, velocity 2
        self.split = (2, 1, 3, cfg.yaw_bins, cfg.yaw_bins, 2)
        self.regression = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, sum(self.split), 1)
        )
        # A focal-loss prior: start at p = 0.1 everywhere, so early training is stable.
        nn.init.constant_(self.heatmap[-1].bias, -2.19)
        bias = self.regression[-1].bias
        with torch.no_grad():
            bias.zero_()
            bias[2] = 2.7  # log(15 m)
            bias[3:6] = torch.tensor([1.4, 0.6, 0.4])  # log of a car's (4.2, 1.8, 1.5) m

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        offset, depth, dims, yaw_bin, yaw_res, velocity = torch.split(
            self.regression(x), self.split, dim=1
        )
        return {
            "heatmap": self.heatmap(x),  # (B, classes, h, w) logits
            "offset": offset,  # (B, 2, h, w) centre within the cell, in cells
            "log_depth": depth,  # (B, 1, h, w) log of the centre's depth along the camera axis
            "log_dims": dims,  # (B, 3, h, w) log of (l, w, h) in metres
            "yaw_bin": yaw_bin,  # (B, bins, h, w) logits of the observation-angle bin
            "yaw_residual": yaw_res,  # (B, bins, h, w) offset within each bin, in bin widths
            "velocity": velocity,  # (B, 2, h, w) m/s along and across the viewing ray
        }


class HealthVAE(nn.Module):
    """A small VAE on the pooled, standardised image + radar features.

    Its input is detached: it learns what the features of normal data look like without
    shaping them. ``score = recon + beta * kl`` per sample; a blacked-out radar, a black or
    blurred camera and noise push the features off what the decoder can rebuild.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.pyramid_channels + cfg.radar_channels
        rows, cols = cfg.vae_grid
        self.grid = (rows, cols)
        self.standardise = nn.BatchNorm2d(c, affine=False)
        flat = cfg.vae_hidden * rows * cols
        self.encoder = nn.Sequential(nn.Conv2d(c, cfg.vae_hidden, 1), nn.ReLU(inplace=True))
        self.to_stats = nn.Linear(flat, 2 * cfg.vae_latent)
        self.decoder = nn.Sequential(
            nn.Linear(cfg.vae_latent, flat),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (cfg.vae_hidden, rows, cols)),
            nn.Conv2d(cfg.vae_hidden, c, 1),
        )
        self.beta = cfg.vae_beta

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.adaptive_avg_pool2d(features.detach().float(), self.grid)  # (B, C, rows, cols)
        x = self.standardise(x)
        mu, log_var = self.to_stats(self.encoder(x).flatten(1)).chunk(2, dim=1)  # (B, Z) each
        log_var = log_var.clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if self.training else mu
        recon = ((self.decoder(z) - x) ** 2).mean(dim=(1, 2, 3))  # (B,)
        kl = 0.5 * (mu**2 + log_var.exp() - 1.0 - log_var).sum(dim=1)  # (B,)
        return {"recon": recon, "kl": kl, "score": recon + self.beta * kl}


class FusionNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_branch = ImageBranch(cfg)
        self.radar_encoder = RadarEncoder(cfg)
        self.fusion = GatedFusion(cfg)
        self.head = CenterHead(cfg)
        self.vae = HealthVAE(cfg)

    def forward(
        self,
        image: torch.Tensor,  # (B, 3, H, W) normalised RGB
        point_features: torch.Tensor,  # (B, N, POINT_FEATURES)
        point_cells: torch.Tensor,  # (B, N) int64
        point_valid: torch.Tensor,  # (B, N) bool
        raster: torch.Tensor,  # (B, C_raster, h, w)
        present: torch.Tensor,  # (B, 2) float: camera present, radar present (0 or 1)
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        batch = image.shape[0]
        if bool((present[:, 0] == 0).all()):  # radar-only: the backbone would be multiplied by 0
            image_features = image.new_zeros(batch, cfg.pyramid_channels, cfg.grid_h, cfg.grid_w)
        else:
            image_features = self.image_branch(image)  # (B, P, h, w)
            image_features = image_features * present[:, 0].view(-1, 1, 1, 1).to(
                image_features.dtype
            )
        radar_features = self.radar_encoder(point_features, point_cells, point_valid, raster)
        radar_features = radar_features * present[:, 1].view(-1, 1, 1, 1).to(radar_features.dtype)
        fused = self.fusion(image_features, radar_features, present)  # (B, head, h, w)
        out = self.head(fused)
        health = self.vae(torch.cat([image_features, radar_features], dim=1))
        out.update({f"health_{k}": v for k, v in health.items()})
        return out


def present_flags(mode: str, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (B, 2) camera/radar-present flags of a mode."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    flags = {"fused": (1.0, 1.0), "camera_only": (1.0, 0.0), "radar_only": (0.0, 1.0)}[mode]
    return torch.tensor(flags, device=device).expand(batch, 2).contiguous()
