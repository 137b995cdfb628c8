"""Tiny synthetic frames for tests and warm-up: boxes drawn as bright rectangles on a dark image,
radar points scattered on their faces, a forward-looking pinhole camera. Not a simulator (see
`fusion.sim` for that); just enough for a network to learn something in a few steps."""

from __future__ import annotations

import numpy as np

from fusion.model.config import ModelConfig
from fusion.model.data import Sample
from fusion.perception.geometry import CameraModel, box_corners
from fusion.wire.messages import CLASS_NAMES, GT_BOX_DTYPE, RADAR_POINT_DTYPE

#: Reference (radar: x forward, y left, z up) -> camera (x right, y down, z forward), with the
#: camera 0.5 m above the radar.
REF_TO_CAM = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.5], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def camera(width_px: int = 448, height_px: int = 256) -> CameraModel:
    focal = 0.8 * width_px
    K = np.array([[focal, 0.0, width_px / 2], [0.0, focal, height_px / 2], [0.0, 0.0, 1.0]])
    return CameraModel(K, width_px, height_px, REF_TO_CAM.copy(), np.zeros(5))


def sample(
    rng: np.random.Generator,
    n_boxes: int = 3,
    width_px: int = 448,
    height_px: int = 256,
    key: str = "synthetic/0",
) -> Sample:
    cam = camera(width_px, height_px)
    boxes = np.zeros(n_boxes, GT_BOX_DTYPE)
    boxes["class_id"] = CLASS_NAMES.index("car")
    boxes["track_id"] = np.arange(n_boxes)
    boxes["x"] = rng.uniform(8, 35, n_boxes)
    boxes["y"] = rng.uniform(-0.25, 0.25, n_boxes) * boxes["x"]
    boxes["z"] = -0.8
    boxes["l"], boxes["w"], boxes["h"] = 4.2, 1.8, 1.5
    boxes["yaw"] = rng.uniform(-np.pi, np.pi, n_boxes)
    boxes["vx"] = rng.normal(0, 3, n_boxes)
    boxes["vy"] = rng.normal(0, 1, n_boxes)
    image = np.full((height_px, width_px, 3), 40, np.uint8)
    image += rng.integers(0, 20, image.shape, dtype=np.uint8)
    points = []
    for b in boxes[np.argsort(-boxes["x"])]:  # far first, so near boxes paint over
        corners = box_corners((b["x"], b["y"], b["z"]), (b["l"], b["w"], b["h"]), float(b["yaw"]))
        uv, depth = cam.project(corners)
        if np.all(depth > 0.1):
            (u0, v0), (u1, v1) = np.nanmin(uv, axis=0), np.nanmax(uv, axis=0)
            colour = int(60 + 190 * np.exp(-b["x"] / 40))
            image[max(0, int(v0)) : max(0, int(v1)), max(0, int(u0)) : max(0, int(u1))] = (
                colour,
                2 * colour // 3,
                200,
            )
        p = np.zeros(6, RADAR_POINT_DTYPE)
        p["x"] = b["x"] - b["l"] / 2 * np.abs(np.cos(b["yaw"])) + rng.normal(0, 0.3, 6)
        p["y"] = b["y"] + rng.normal(0, 0.5, 6)
        p["z"] = b["z"] + rng.normal(0, 0.3, 6)
        p["v_r"] = b["vx"]
        p["rcs"] = rng.uniform(5, 15, 6)
        points.append(p)
    clutter = np.zeros(5, RADAR_POINT_DTYPE)
    clutter["x"] = rng.uniform(5, 50, 5)
    clutter["y"] = rng.uniform(-15, 15, 5)
    clutter["rcs"] = rng.uniform(-5, 5, 5)
    points.append(clutter)
    return Sample(image, np.concatenate(points), cam, boxes, key.split("/")[0], key)


def tiny_config(**overrides: object) -> ModelConfig:
    """A very small network (128x64 input, a few thousand weights) for fast tests."""
    values: dict = {
        "input_w": 128,
        "input_h": 64,
        "backbone_stages": (
            (8, 1, 3, 1, 1),
            (8, 2, 3, 2, 1),
            (16, 2, 3, 2, 1),
            (16, 2, 3, 2, 1),
            (24, 2, 3, 2, 1),
        ),
        "stem_channels": 8,
        "pyramid_channels": 16,
        "radar_channels": 8,
        "head_channels": 16,
        "point_mlp_channels": (8, 16),
    }
    values.update(overrides)
    return ModelConfig(**values)
