"""The model's configuration: one dataclass whose fields say what they set.

A config travels inside every checkpoint, so a saved model rebuilds itself exactly. The two
presets name the input size per data source: the simulator's 1280x720 camera is resized to
448x256 (the default, the latency budget's input), the Astyx 2048x618 camera (aspect 3.3) to
512x160 (a quarter of its width, about the same aspect, so objects are not squashed and a
training epoch stays affordable on two CPU cores).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fusion.errors import ConfigError
from fusion.wire.messages import CLASS_NAMES


@dataclass
class ModelConfig:
    # --- input ---
    input_w: int = 448  # image width fed to the network (px); the camera image is resized to it
    input_h: int = 256  # image height (px)
    stride: int = 8  # output stride of the feature map the head runs on
    class_names: tuple[str, ...] = CLASS_NAMES  # class id -> name, as in fusion.wire.messages

    # --- image branch (MobileNetV3-like backbone + feature pyramid to stride 8) ---
    # (out_channels, expansion, kernel, stride, blocks) per stage after a stride-2 stem
    backbone_stages: tuple[tuple[int, int, int, int, int], ...] = (
        (16, 1, 3, 1, 1),  # stride 2
        (24, 4, 3, 2, 2),  # stride 4
        (40, 3, 5, 2, 2),  # stride 8
        (80, 3, 3, 2, 2),  # stride 16
        (112, 3, 3, 2, 2),  # stride 32
    )
    stem_channels: int = 16
    pyramid_channels: int = 64  # channels of every pyramid level and of the fused map

    # --- radar encoder ---
    radar_raster_channels: int = 4  # len(preprocess.RADAR_RASTER_CHANNELS); 0 = no raster
    point_mlp_channels: tuple[int, ...] = (32, 64)  # shared per-point MLP widths (PointNet)
    radar_channels: int = 32  # radar feature map channels after the radar convolutions
    max_radar_points: int = 1024  # points beyond this (furthest first) are dropped
    # per-point input normalisation (x, y, z, v_r, rcs, dt_s): value -> (value - mean) / std;
    # set from the training data by fusion.learn.train
    point_mean: tuple[float, ...] = (20.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    point_std: tuple[float, ...] = (15.0, 8.0, 1.5, 5.0, 10.0, 0.05)

    # --- fusion ---
    camera_dropout: float = 0.2  # training: chance a sample loses its camera features
    radar_dropout: float = 0.2  # training: chance a sample loses its radar features

    # --- head (CenterNet-style) ---
    head_channels: int = 64
    yaw_bins: int = 8  # observation angle (yaw relative to the viewing ray) classes
    max_objects: int = 64  # targets per frame
    heatmap_min_radius_cells: float = 1.0
    max_target_range_m: float = 60.0  # objects beyond this ground range are not trained on
    top_k: int = 50  # decoding: peaks kept before the score threshold
    score_threshold: float = 0.05  # decoding: peaks below are dropped
    # decoding with radar: a box's range snaps to the median range of the radar points it
    # covers plus offset[0] + offset[1] * (the box's half extent along the ray); fitted on the
    # training boxes by fusion.learn.train (radar sees the near surface, not the centre)
    radar_refine: bool = True
    radar_refine_offset_m: tuple[float, float] = (-0.36, 0.86)
    radar_refine_gate_m: float = 2.5  # points further than this in range from the box are ignored
    # decoding: a box whose ground-plane centre is within this of a higher-scored box of the
    # same class is dropped (a large object can raise several heatmap peaks); 0 = off
    bev_nms_m: float = 2.0

    # --- loss weights ---
    offset_weight: float = 1.0
    depth_weight: float = 1.0
    dims_weight: float = 1.0
    yaw_bin_weight: float = 0.5
    yaw_residual_weight: float = 1.0
    velocity_weight: float = 0.2

    # --- VAE sensor-health score ---
    vae_grid: tuple[int, int] = (4, 8)  # the fused features are pooled to (rows, cols)
    vae_hidden: int = 32  # channels per pooled cell inside the VAE
    vae_latent: int = 16  # size of z
    vae_beta: float = 0.1  # weight of KL in the VAE loss (beta-VAE)
    vae_weight: float = 0.1  # weight of the VAE loss in the total loss

    extra: dict[str, str] = field(default_factory=dict)  # free-form notes (data, split)

    def __post_init__(self) -> None:
        if self.input_w % 32 or self.input_h % 32:
            raise ConfigError(
                f"input size {self.input_w}x{self.input_h} must be a multiple of 32 "
                "(the backbone downsamples 5 times)"
            )
        if self.stride != 8:
            raise ConfigError(f"stride {self.stride} unsupported; the pyramid ends at 8")
        if len(self.point_mean) != 6 or len(self.point_std) != 6:
            raise ConfigError("point_mean and point_std need 6 values (x, y, z, v_r, rcs, dt_s)")

    @property
    def grid_w(self) -> int:
        return self.input_w // self.stride

    @property
    def grid_h(self) -> int:
        return self.input_h // self.stride

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown model config fields {sorted(unknown)}; wrong checkpoint?")
        fixed = {
            k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
            if isinstance(v, list)
            else v
            for k, v in values.items()
        }
        return cls(**fixed)


def sim_config(**overrides: object) -> ModelConfig:
    """The default: the simulator's 16:9 camera at 448x256."""
    return ModelConfig(**overrides)


def astyx_config(**overrides: object) -> ModelConfig:
    """Astyx HiRes2019: the 2048x618 camera at 512x160, cars only (the evaluated class)."""
    values: dict = {"input_w": 512, "input_h": 160, "class_names": ("car",)}
    values.update(overrides)
    return ModelConfig(**values)
