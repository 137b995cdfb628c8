"""The model's configuration: one dataclass whose fields say what they set and why.

A config travels inside every weights file, so a saved model rebuilds itself exactly. Fields
fall in three groups: the input (image size, the bird's-eye-view grid the detections live on),
the network (widths, which backbone blocks train), and what training measures on its data and
hands to serving (the ground plane, the health score's calibration). The two presets name the
input per data source: the Astyx 2048x618 camera at 512x160 (a quarter of its width; a car at
40 m is then about 20 pixels wide), the simulator's 1280x720 camera at 384x224.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from fusion.errors import ConfigError
from fusion.wire.messages import CLASS_NAMES


@dataclass
class ModelConfig:
    # --- input ---
    input_w: int = 384  # image width fed to the network (px), a multiple of 32
    input_h: int = 224  # image height (px), a multiple of 32
    class_names: tuple[str, ...] = ("car",)  # what the heatmap detects, names from CLASS_NAMES

    # --- bird's-eye-view grid, reference (radar) frame: x forward, y left ---
    # 51.2 m ahead covers the 50 m evaluation range; +-25.6 m covers a 60 degree camera there.
    x_range_m: tuple[float, float] = (0.0, 51.2)
    y_range_m: tuple[float, float] = (-25.6, 25.6)
    raster_cell_m: float = 0.4  # radar raster cell; a car is about 11 x 4 cells
    head_stride: int = 2  # head cell = raster_cell_m * head_stride (0.8 m); offsets refine it
    # Car-centre plane z = a + b * x in the reference frame: a radar pitched down sees the road
    # rise with range (Astyx: 4.5 cm per metre). Fitted on the training boxes by `fusion train`.
    ground_plane: tuple[float, float] = (0.0, 0.0)
    # Heights above that plane at which image features are sampled into each BEV cell (m).
    lift_heights_m: tuple[float, ...] = (-1.2, -0.6, 0.0, 0.6, 1.2)

    # --- network ---
    image_channels: int = 64  # feature pyramid width (strides 8, 16, 32 merged at 8)
    lift_channels: int = 32  # image channels per height lifted into the BEV grid
    bev_channels: int = 64  # width of the BEV network (half-resolution stage: twice this)

    # --- radar raster normalisation ---
    rcs_offset: float = 50.0  # rcs -> (rcs - offset) / scale (Astyx magnitude is ~30-70)
    rcs_scale: float = 10.0
    v_r_scale_mps: float = 5.0

    # --- training behaviour that serving must know ---
    camera_dropout: float = 0.15  # chance a training sample loses its camera
    radar_dropout: float = 0.15  # chance a training sample loses its radar (same weights serve
    # the node's camera-only and radar-only modes)

    # --- head (CenterPoint-style, on the BEV grid) ---
    max_objects: int = 64  # targets per frame
    min_radius_cells: float = 1.0  # smallest Gaussian radius of a heatmap target
    top_k: int = 60  # decoding: peaks kept before the score threshold
    score_threshold: float = 0.05  # decoding: peaks below are dropped
    bev_nms_m: float = 1.5  # decoding: a box this close to a better one of its class is dropped

    # --- loss weights ---
    offset_weight: float = 1.0
    z_weight: float = 0.5
    dims_weight: float = 1.0
    yaw_weight: float = 0.5
    velocity_weight: float = 0.2

    # --- VAE sensor health ---
    vae_latent: int = 16  # size of z
    vae_hidden: int = 128  # width of the encoder/decoder layer
    vae_beta: float = 0.1  # weight of KL in the VAE loss (beta-VAE)
    vae_weight: float = 0.1  # weight of the VAE loss in the total loss
    # Set by training on validation frames (fusion.model.health): per cue, the clean median and
    # spread the score is measured against, and the threshold above which a frame is flagged.
    health: dict[str, list[float]] = field(default_factory=dict)
    health_threshold: float = float("inf")

    extra: dict[str, str] = field(default_factory=dict)  # free-form notes (data, split)

    def __post_init__(self) -> None:
        if self.input_w % 32 or self.input_h % 32 or self.input_w <= 0 or self.input_h <= 0:
            raise ConfigError(
                f"input size {self.input_w}x{self.input_h} must be a positive multiple of 32 "
                "(the backbone downsamples 5 times)"
            )
        unknown = [c for c in self.class_names if c not in CLASS_NAMES]
        if unknown or not self.class_names:
            raise ConfigError(f"class_names {self.class_names} must be names from {CLASS_NAMES}")
        for name in ("raster", "head"):
            n = self.grid_shape(name)
            if n[0] <= 0 or n[1] <= 0:
                raise ConfigError(f"the {name} grid {n} is empty; check the BEV ranges and cells")
        cells = (self.x_range_m[1] - self.x_range_m[0]) / self.head_cell_m
        if abs(cells - round(cells)) > 1e-6 or self.grid_shape("raster")[0] % self.head_stride:
            raise ConfigError(
                f"x range {self.x_range_m} must hold a whole number of head cells "
                f"({self.head_cell_m} m) and raster cells divisible by head_stride"
            )
        if not self.lift_heights_m:
            raise ConfigError("lift_heights_m needs at least one height")

    @property
    def head_cell_m(self) -> float:
        return self.raster_cell_m * self.head_stride

    def grid_shape(self, which: str = "head") -> tuple[int, int]:
        """(rows along x, columns along y) of the ``raster`` or ``head`` grid."""
        cell = self.raster_cell_m if which == "raster" else self.head_cell_m
        return (
            round((self.x_range_m[1] - self.x_range_m[0]) / cell),
            round((self.y_range_m[1] - self.y_range_m[0]) / cell),
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown model config fields {sorted(unknown)}; wrong weights file?")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            return cls(**fixed)
        except TypeError as exc:
            raise ConfigError(f"model config does not fit this version: {exc}") from exc


def sim_config(**overrides: object) -> ModelConfig:
    """The simulator's 16:9 camera at 384x224, all four classes."""
    values: dict = {"class_names": CLASS_NAMES}
    values.update(overrides)
    return ModelConfig(**values)


def astyx_config(**overrides: object) -> ModelConfig:
    """Astyx HiRes2019: the 2048x618 camera at 512x160, cars only (the evaluated class)."""
    values: dict = {"input_w": 512, "input_h": 160, "class_names": ("car",)}
    values.update(overrides)
    return ModelConfig(**values)
