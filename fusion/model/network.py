"""The fusion network, top to bottom: a pretrained image branch, its features lifted onto a
bird's-eye-view grid through the calibration, a radar raster encoder on the same grid, a BEV
network over both, a CenterPoint-style head, and the VAE whose score says how unlike the
training data an input is.

Shapes: B batch; H x W the input image; X x Y the radar raster grid (rows along x, columns
along y, row 0 at the far edge); x x y = X/s x Y/s the head grid; Z lift heights.

1. **Image branch**: EfficientNet-Lite0 (ImageNet weights from the installed package, frozen:
   `early_features` is what training caches) tapped at strides 8, 16 and 32, merged top-down
   into one stride-8 map (a small feature pyramid).
2. **Lift**: every head cell samples the image map where its centre projects at each of Z
   heights above the ground plane (`grid`, made from the calibration by
   `fusion.model.inputs.lift_grid`, outside the image -> zeros), giving the camera's evidence
   where the radar measures range. A "seen by the camera" channel goes with it.
3. **Radar**: the Numba raster of `fusion.perception.preprocess.radar_bev_raster` through two
   convolutions, the second at the head's stride.
4. **BEV network** over both plus two "modality present" channels: depthwise-separable blocks
   at full and half resolution, merged U-Net style.
5. **Head**: per class a heatmap; offset (2) inside the cell, z (1), log (l, w, h) (3), yaw as
   (sin, cos) (2), velocity over ground (vx, vy) (2).
6. **VAE** on pooled, detached image and radar features (it never changes what the detector
   learns); its per-frame score is reconstruction error plus beta x KL.

Modes: ``fused``; ``camera_only`` zeroes the radar features; ``radar_only`` the image features.
Modality dropout in training makes one set of weights serve all three. Every input has a fixed
shape, so one exported graph serves every mode and every radar point count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)
from torch import nn

from fusion.model import replicas
from fusion.model.config import ModelConfig
from fusion.model.efficientnet import (
    BLOCK_CHANNELS,
    EfficientNetLite0,
    fold_pairs,
    load_pretrained,
)

MODES = ("fused", "camera_only", "radar_only")
#: Backbone blocks whose outputs the image branch taps (strides 8, 16, 32).
TAP_STRIDE8, TAP_STRIDE16, TAP_STRIDE32 = 4, 10, 15
#: Head outputs and their channels (heatmap: one per class).
HEAD_CHANNELS = {"offset": 2, "z": 1, "log_dims": 3, "yaw": 2, "velocity": 2}
#: The number of `fusion.perception.preprocess.radar_bev_raster` channels, and the width of the
#: first radar convolution (at the raster's full resolution, where it costs the most).
RADAR_CHANNELS = 9
RADAR_STEM_CHANNELS = 32
#: Pooled grid of each modality's features fed to the VAE (rows, cols).
VAE_IMAGE_POOL = (2, 8)
VAE_RADAR_POOL = (4, 4)
VAE_KEYS = ("vae_recon", "vae_kl", "vae_score")


def conv_bn(c_in: int, c_out: int, k: int = 3, s: int = 1, groups: int = 1, act: bool = True):
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SeparableBlock(nn.Module):
    """3x3 depthwise then 1x1 pointwise, residual when the shape is kept."""

    def __init__(self, c_in: int, c_out: int | None = None, stride: int = 1) -> None:
        super().__init__()
        c_out = c_out or c_in
        self.depthwise = conv_bn(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise = conv_bn(c_in, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return self.act(x + y if self.residual else y)


class FrozenBackbone(nn.Module):
    """The whole EfficientNet-Lite0 feature extractor (stem and blocks 0-15, strides 2 to 32) at
    its ImageNet weights, frozen: its outputs for a frame never change, so training computes
    them once (`fusion.learn.features`), and a weights file need not carry them."""

    def __init__(self, backbone: EfficientNetLite0) -> None:
        super().__init__()
        self.pad = backbone.pad
        self._conv_stem = backbone._conv_stem
        self._bn0 = backbone._bn0
        self._blocks = backbone._blocks
        self.act = nn.ReLU6(inplace=True)
        self.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(self.pad(image))))
        taps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in (TAP_STRIDE8, TAP_STRIDE16):
                taps.append(x)
        return taps[0], taps[1], x  # (B, 40, H/8, W/8), (B, 112, H/16, W/16), (B, 320, H/32, W/32)

    def train(self, mode: bool = True) -> FrozenBackbone:
        return super().train(False)  # batch norms keep the ImageNet statistics

    def fold(self) -> None:
        fold_pairs(self, (("_conv_stem", "_bn0"),))


class ImageBranch(nn.Module):
    """The frozen backbone's three taps merged top-down (a small feature pyramid) at stride 8."""

    def __init__(self, cfg: ModelConfig, backbone: EfficientNetLite0) -> None:
        super().__init__()
        self.early = FrozenBackbone(backbone)
        c = cfg.image_channels
        self.lateral8 = conv_bn(BLOCK_CHANNELS[TAP_STRIDE8], c, 1)
        self.lateral16 = conv_bn(BLOCK_CHANNELS[TAP_STRIDE16], c, 1)
        self.lateral32 = conv_bn(BLOCK_CHANNELS[TAP_STRIDE32], c, 1)
        self.smooth = conv_bn(c, c, 3)
        self.reduce = conv_bn(c, cfg.lift_channels, 1)

    def from_early(self, f8: torch.Tensor, f16: torch.Tensor, f32: torch.Tensor) -> torch.Tensor:
        p = self.lateral32(f32)
        p = self.lateral16(f16) + F.interpolate(p, size=f16.shape[-2:], mode="nearest")
        p = self.lateral8(f8) + F.interpolate(p, size=f8.shape[-2:], mode="nearest")
        return self.reduce(self.smooth(p))  # (B, lift_channels, H/8, W/8)


class HealthVAE(nn.Module):
    """q(z|x) = N(mu, sigma^2) and p(x|z) over a frame's pooled, standardised features."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n_in = cfg.lift_channels * VAE_IMAGE_POOL[0] * VAE_IMAGE_POOL[1]
        n_in += cfg.bev_channels * VAE_RADAR_POOL[0] * VAE_RADAR_POOL[1]
        self.beta = cfg.vae_beta
        self.norm = nn.BatchNorm1d(n_in, affine=False)
        self.encoder = nn.Sequential(nn.Linear(n_in, cfg.vae_hidden), nn.ReLU(inplace=True))
        self.mu = nn.Linear(cfg.vae_hidden, cfg.vae_latent)
        self.log_var = nn.Linear(cfg.vae_hidden, cfg.vae_latent)
        self.decoder = nn.Sequential(
            nn.Linear(cfg.vae_latent, cfg.vae_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.vae_hidden, n_in),
        )

    def forward(
        self,
        image: torch.Tensor,
        radar: torch.Tensor,
        present: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scores per frame, (B,) each. In training only frames with both sensors are seen
        (the others score 0), so the standardisation learns what a healthy frame looks like;
        `noise` (B, latent) is the reparameterisation's standard normal draw (drawn here when
        None; training passes one drawn per sample, so a sample's draw does not depend on the
        batch it is in or on the process that holds it)."""
        if not self.training:
            return self._scores(image, radar, None)
        both = (present[:, 0] > 0) & (present[:, 1] > 0)
        # Counted over the global batch in a data-parallel run (fusion.model.replicas): every
        # process then takes part in the batch norm's reductions, or none does.
        if replicas.count(self.norm, both) < 2:  # batch norm needs two samples
            return {k: image.new_zeros(image.shape[0], dtype=torch.float32) for k in VAE_KEYS}
        if both.all():
            return self._scores(image, radar, noise)
        out = {k: image.new_zeros(image.shape[0], dtype=torch.float32) for k in VAE_KEYS}
        subset = None if noise is None else noise[both]
        for k, v in self._scores(image[both], radar[both], subset).items():
            out[k][both] = v
        return out

    def _scores(
        self, image: torch.Tensor, radar: torch.Tensor, noise: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        x = torch.cat(
            [_pool(image.detach(), VAE_IMAGE_POOL), _pool(radar.detach(), VAE_RADAR_POOL)], dim=1
        ).float()
        if self.training:
            x = self.norm(x)  # (B, n_in), and the running statistics learn healthy frames
        else:  # the same standardisation written out, so that it exports to ONNX
            x = (x - self.norm.running_mean) * torch.rsqrt(self.norm.running_var + self.norm.eps)
        h = self.encoder(x)
        mu, log_var = self.mu(h), self.log_var(h).clamp(-10, 10)
        if self.training:
            noise = torch.randn_like(mu) if noise is None else noise.to(mu)
            z = mu + noise * torch.exp(0.5 * log_var)
        else:
            z = mu
        recon = ((self.decoder(z) - x) ** 2).mean(dim=1)  # (B,)
        kl = 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(dim=1)  # (B,)
        return dict(zip(VAE_KEYS, (recon, kl, recon + self.beta * kl), strict=True))


def _pool(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * rows * cols): means over a rows x cols grid of equal blocks
    (the remainder rows and columns are left out), written so that it exports to ONNX."""
    b, c, h, w = (int(n) for n in x.shape)
    rows, cols = grid
    bh, bw = max(1, h // rows), max(1, w // cols)
    x = x[:, :, : rows * bh, : cols * bw].reshape(b, c, rows, bh, cols, bw)
    return x.mean(dim=(3, 5)).reshape(b, c * rows * cols)


class FusionNet(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        backbone = load_pretrained() if pretrained else EfficientNetLite0()
        self.image = ImageBranch(cfg, backbone)
        c, z = cfg.bev_channels, len(cfg.lift_heights_m)
        self.lift = conv_bn(cfg.lift_channels * z + 1, c, 1)
        self.radar = nn.Sequential(
            conv_bn(RADAR_CHANNELS, RADAR_STEM_CHANNELS, 3),
            conv_bn(RADAR_STEM_CHANNELS, c, 3, s=cfg.head_stride),
        )
        self.fuse = conv_bn(2 * c + 2, c, 1)
        self.fine = nn.Sequential(SeparableBlock(c), SeparableBlock(c))
        self.coarse = nn.Sequential(
            SeparableBlock(c, 2 * c, stride=2), SeparableBlock(2 * c), SeparableBlock(2 * c)
        )
        self.up = conv_bn(2 * c, c, 1)
        self.post = nn.Sequential(SeparableBlock(c), conv_bn(c, c, 3))
        self.heads = nn.ModuleDict(
            {"heatmap": nn.Conv2d(c, cfg.num_classes, 1)}
            | {name: nn.Conv2d(c, n, 1) for name, n in HEAD_CHANNELS.items()}
        )
        nn.init.constant_(self.heads["heatmap"].bias, -2.19)  # CenterNet's prior of 0.1
        self.vae = HealthVAE(cfg)

    def early_features(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The frozen backbone's stride-8, 16 and 32 maps (what training caches)."""
        return self.image.early(image)

    def forward(
        self,
        image: torch.Tensor,
        raster: torch.Tensor,
        grid: torch.Tensor,
        present: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """image (B, 3, H, W) normalised RGB; raster (B, 9, X, Y); grid (B, Z, x, y, 2) image
        coordinates in [-1, 1]; present (B, 2) camera / radar flags."""
        f8, f16, f32 = self.image.early(image)
        return self.from_early(f8, f16, f32, raster, grid, present)

    def from_early(
        self,
        f8: torch.Tensor,
        f16: torch.Tensor,
        f32: torch.Tensor,
        raster: torch.Tensor,
        grid: torch.Tensor,
        present: torch.Tensor,
        vae_noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`forward` from the frozen backbone's maps (what training runs on the cached maps);
        `vae_noise` as `HealthVAE.forward`'s `noise`."""
        b, z, gx, gy, _ = grid.shape
        features = self.image.from_early(f8, f16, f32)  # (B, L, H/8, W/8)
        lifted = F.grid_sample(
            features,
            grid.reshape(b, z * gx, gy, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # (B, L, Z*x, y)
        lifted = lifted.reshape(b, -1, z, gx, gy).flatten(1, 2)  # (B, L*Z, x, y)
        seen = (grid[:, z // 2, :, :, 0].abs() <= 1).to(lifted.dtype).unsqueeze(1)  # (B, 1, x, y)
        camera_on = present[:, 0].reshape(b, 1, 1, 1).to(lifted.dtype)
        radar_on = present[:, 1].reshape(b, 1, 1, 1).to(lifted.dtype)
        image_bev = self.lift(torch.cat([lifted, seen], 1)) * camera_on  # (B, C, x, y)
        radar_bev = self.radar(raster) * radar_on  # (B, C, x, y)
        flags = present.reshape(b, 2, 1, 1).expand(b, 2, gx, gy).to(lifted.dtype)
        x = self.fine(self.fuse(torch.cat([image_bev, radar_bev, flags], 1)))  # (B, C, x, y)
        x = x + F.interpolate(self.up(self.coarse(x)), size=(gx, gy), mode="nearest")
        x = self.post(x)
        out = {name: head(x) for name, head in self.heads.items()}  # each (B, n, x, y)
        out.update(self.vae(features * camera_on, radar_bev, present, vae_noise))
        return out

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a weights file must carry: everything but the backbone, which stays at the
        installed package's weights."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("image.early.")}


def present_flags(mode: str, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 2) camera / radar present flags for a mode."""
    camera = 0.0 if mode == "radar_only" else 1.0
    radar = 0.0 if mode == "camera_only" else 1.0
    return torch.tensor([[camera, radar]] * batch, device=device)
