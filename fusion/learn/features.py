"""Labelled frames with their frozen backbone features, computed once and kept on disk.

The image branch's backbone keeps its ImageNet weights
(`fusion.model.network.FrozenBackbone`), so its outputs for a frame never change during
training: `FeatureSet` holds its three taps (strides 8, 16, 32) for every frame, for its mirror
image (the flip augmentation) and for a photometric variant of both (another exposure and white
balance), in fp16, beside the frames themselves. An epoch then pays
only for the trainable layers, which is what lets the default Astyx training fit its 15-minute
budget on two cores.

`cached_features` keeps a feature set under ``cache_dir`` in a safetensors file (tensors and
raw arrays, a JSON header; nothing is unpickled), named by a hash of the data's description,
the input size, the backbone weights and `CACHE_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusion.learn.data import LabelledFrame
from fusion.model.config import ModelConfig
from fusion.model.efficientnet import load_pretrained, pretrained_digest
from fusion.model.inputs import encode_image
from fusion.model.network import FrozenBackbone
from fusion.perception.frame import FrameInputs
from fusion.perception.geometry import CameraModel
from fusion.wire.messages import GT_BOX_DTYPE, RADAR_POINT_DTYPE

log = logging.getLogger(__name__)

#: Bump when what a cached feature set holds or how it is computed changes.
CACHE_VERSION = 3
MAP_NAMES = ("f8", "f16", "f32")
#: Photometric variants cached per frame beside the image as recorded (each also mirrored).
PHOTOMETRIC_VARIANTS = 1


@dataclass
class FeatureSet:
    """Frames and their frozen backbone maps in fp16: ``maps["f8"]`` (N, 40, H/8, W/8),
    ``maps["f16"]`` (N, 112, H/16, W/16), ``maps["f32"]`` (N, 320, H/32, W/32), and the same for
    the mirrored images (``"f8_mirror"``), the photometric variants (``"f8_photo1"``) and their
    mirror images (``"f8_photo1_mirror"``)."""

    frames: list[LabelledFrame]
    maps: dict[str, torch.Tensor]
    description: str

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, indices: Sequence[int]) -> FeatureSet:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        maps = {k: v[index] for k, v in self.maps.items()}
        return FeatureSet([self.frames[i] for i in indices], maps, self.description)

    @property
    def variants(self) -> int:
        """How many photometric variants of each image the set holds (0 = as recorded)."""
        return sum(1 for k in self.maps if k.startswith("f8_photo") and "mirror" not in k) + 1

    def early(self, index: int, mirrored: bool, variant: int = 0) -> tuple[torch.Tensor, ...]:
        """Frame `index`'s (f8, f16, f32) for photometric `variant` (0: the image as recorded),
        of its mirror image when `mirrored`."""
        suffix = (f"_photo{variant}" if variant else "") + ("_mirror" if mirrored else "")
        return tuple(self.maps[name + suffix][index] for name in MAP_NAMES)


def photometric(image_bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image under another exposure and white balance: gain 0.6-1.4, offset +-25 levels,
    +-10 % per colour channel (the real frames vary in exposure more than 300 of them show)."""
    gain = rng.uniform(0.6, 1.4) * rng.uniform(0.9, 1.1, 3)
    offset = rng.uniform(-25.0, 25.0)
    return np.clip(image_bgr.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


@torch.inference_mode()
def compute_features(
    frames: list[LabelledFrame],
    cfg: ModelConfig,
    description: str,
    photometric_variants: int = PHOTOMETRIC_VARIANTS,
    batch: int = 16,
) -> FeatureSet:
    """Run the frozen backbone over every frame and its mirror image, as recorded and under
    `photometric_variants` random exposures (seeded per frame, so the cache is reproducible)."""
    backbone = FrozenBackbone(load_pretrained())
    maps: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        for variant in range(photometric_variants + 1):
            prefix = f"_photo{variant}" if variant else ""
            images = np.stack(
                [
                    encode_image(
                        photometric(f.inputs.image_bgr, np.random.default_rng([start + i, variant]))
                        if variant
                        else f.inputs.image_bgr,
                        cfg,
                    )
                    for i, f in enumerate(chunk)
                ]
            )
            flipped = np.ascontiguousarray(images[..., ::-1])
            for suffix, array in ((prefix, images), (prefix + "_mirror", flipped)):
                for name, out in zip(MAP_NAMES, backbone(torch.from_numpy(array)), strict=True):
                    maps.setdefault(name + suffix, []).append(out.half())
    joined = {k: torch.cat(v) for k, v in maps.items()}
    return FeatureSet(frames, joined, description)


def cached_features(
    description: str,
    make_frames: Callable[[], list[LabelledFrame]],
    cfg: ModelConfig,
    cache_dir: Path | None,
) -> FeatureSet:
    """The feature set of the frames `make_frames` builds, from ``cache_dir`` when there."""
    key = json.dumps(
        [CACHE_VERSION, description, cfg.input_w, cfg.input_h, pretrained_digest()]
    ).encode()
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"features-{hashlib.sha256(key).hexdigest()[:16]}.safetensors"
        if path.exists():
            try:
                return load_feature_set(path)
            except Exception as exc:  # a damaged cache is rebuilt, never trusted
                log.warning("cache %s unreadable (%s); rebuilding it", path, exc)
    features = compute_features(make_frames(), cfg, description)
    if path is not None:
        save_feature_set(features, path)
    return features


def save_feature_set(features: FeatureSet, path: Path) -> None:
    from safetensors.torch import save_file

    frames = features.frames
    tensors = {f"map.{k}": v for k, v in features.maps.items()}
    meta = []
    for i, f in enumerate(frames):
        tensors[f"image.{i}"] = torch.from_numpy(np.ascontiguousarray(f.inputs.image_bgr))
        tensors[f"points.{i}"] = torch.from_numpy(
            np.ascontiguousarray(f.inputs.points).view(np.uint8).copy()
        )
        tensors[f"boxes.{i}"] = torch.from_numpy(
            np.ascontiguousarray(f.boxes).view(np.uint8).copy()
        )
        cam = f.inputs.camera
        meta.append(
            {
                "sequence": f.sequence,
                "key": f.key,
                "K": cam.K.tolist(),
                "ref_to_cam": cam.ref_to_cam.tolist(),
                "distortion": np.asarray(cam.distortion).tolist(),
                "size": [cam.width_px, cam.height_px],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        tensors,
        str(tmp),
        metadata={"frames": json.dumps(meta), "description": features.description},
    )
    tmp.replace(path)


def load_feature_set(path: Path) -> FeatureSet:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        meta = json.loads(header["frames"])
        frames = []
        for i, m in enumerate(meta):
            camera = CameraModel(
                np.array(m["K"]),
                m["size"][0],
                m["size"][1],
                np.array(m["ref_to_cam"]),
                np.array(m["distortion"]),
            )
            points = f.get_tensor(f"points.{i}").numpy().view(RADAR_POINT_DTYPE)
            boxes = f.get_tensor(f"boxes.{i}").numpy().view(GT_BOX_DTYPE)
            image = f.get_tensor(f"image.{i}").numpy()
            frames.append(
                LabelledFrame(FrameInputs(image, points, camera), boxes, m["sequence"], m["key"])
            )
        maps = {k[4:]: f.get_tensor(k) for k in f.keys() if k.startswith("map.")}  # noqa: SIM118
    return FeatureSet(frames, maps, header.get("description", ""))


def concatenate(sets: Sequence[FeatureSet]) -> FeatureSet:
    """One feature set of several (same input size)."""
    return FeatureSet(
        [f for s in sets for f in s.frames],
        {k: torch.cat([s.maps[k] for s in sets]) for k in sets[0].maps},
        "; ".join(s.description for s in sets),
    )
