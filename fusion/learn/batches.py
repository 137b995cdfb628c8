"""Network batches from a `FeatureSet`: cached backbone maps plus the radar raster, the lift
grid and the targets, made per sample by the serving code (`fusion.model.inputs`,
`fusion.model.targets`) after the augmentations of `fusion.learn.augment`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fusion.learn.augment import mirror, radar_noise, similarity
from fusion.learn.config import TrainConfig
from fusion.learn.features import FeatureSet
from fusion.model.config import ModelConfig
from fusion.model.inputs import LiftGridCache, lift_grid, radar_raster
from fusion.model.targets import encode_targets


def sample(
    features: FeatureSet,
    index: int,
    cfg: ModelConfig,
    augment: TrainConfig | None = None,
    rng: np.random.Generator | None = None,
    grids: LiftGridCache | None = None,
) -> dict:
    """One sample's network inputs and targets; augmented with `augment`'s settings when given
    (then `rng` draws them), as served otherwise."""
    frame = features.frames[index]
    points, boxes, camera = frame.inputs.points, frame.boxes, frame.inputs.camera
    augmenting = augment is not None and rng is not None
    mirrored = augmenting and rng.random() < augment.flip
    variant = int(rng.integers(features.variants)) if augmenting else 0
    f8, f16, f32 = features.early(index, mirrored, variant)
    if mirrored:
        points, boxes, camera = mirror(points, boxes, camera)
    if augmenting:
        points, boxes, camera = similarity(
            points,
            boxes,
            camera,
            rng.uniform(-augment.rotate_rad, augment.rotate_rad),
            1.0 + rng.uniform(-augment.scale, augment.scale),
            rng.uniform(-augment.shift_m, augment.shift_m),
        )
        points = radar_noise(points, rng, augment.point_dropout, augment.point_jitter_m)
        grid = lift_grid(camera, cfg)
    else:
        grid = grids(camera) if grids is not None else lift_grid(camera, cfg)
    return {
        "f8": f8,
        "f16": f16,
        "f32": f32,
        "raster": radar_raster(points, cfg),
        "grid": grid,
        "targets": encode_targets(boxes, cfg),
    }


def collate(samples: Sequence[dict], device: torch.device | str = "cpu") -> dict:
    """Stack samples into float32 tensors on `device`."""
    out = {
        "f8": torch.stack([s["f8"] for s in samples]).float(),
        "f16": torch.stack([s["f16"] for s in samples]).float(),
        "f32": torch.stack([s["f32"] for s in samples]).float(),
        "raster": torch.from_numpy(np.stack([s["raster"] for s in samples])),
        "grid": torch.from_numpy(np.stack([s["grid"] for s in samples])),
    }
    out = {k: v.to(device) for k, v in out.items()}
    out["targets"] = {
        k: torch.from_numpy(np.stack([s["targets"][k] for s in samples])).to(device)
        for k in samples[0]["targets"]
    }
    return out


def modality_flags(batch: int, cfg: ModelConfig, rng: np.random.Generator) -> torch.Tensor:
    """(B, 2) camera / radar present flags with modality dropout: each sample loses its camera
    with probability ``cfg.camera_dropout``, else its radar with ``cfg.radar_dropout``."""
    r = rng.random(batch)
    camera = r >= cfg.camera_dropout
    radar = (r < cfg.camera_dropout) | (r >= cfg.camera_dropout + cfg.radar_dropout)
    return torch.from_numpy(np.stack([camera, radar], axis=1).astype(np.float32))
