"""Tiny synthetic frames for tests and warm-up: boxes drawn as bright rectangles on a noisy
image, radar points scattered on their near faces, a forward-looking pinhole camera. Not a
simulator (see `fusion.sim` for that); just enough for a network to learn something in a few
steps and for every code path to run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.model.config import ModelConfig
from fusion.perception.frame import FrameInputs
from fusion.perception.geometry import CameraModel, box_corners
from fusion.wire.messages import CLASS_NAMES, GT_BOX_DTYPE, RADAR_POINT_DTYPE

#: Reference (radar: x forward, y left, z up) -> camera (x right, y down, z forward), with the
#: camera 0.5 m above the radar.
REF_TO_CAM = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.5], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


@dataclass
class SyntheticFrame:
    inputs: FrameInputs
    boxes: np.ndarray  # (M,) GT_BOX_DTYPE in the reference frame


def camera(width_px: int = 640, height_px: int = 360) -> CameraModel:
    """A 60-degree pinhole camera looking along the radar's x axis."""
    focal = width_px / 2 / np.tan(np.radians(30.0))
    K = np.array([[focal, 0.0, width_px / 2], [0.0, focal, height_px / 2], [0.0, 0.0, 1.0]])
    return CameraModel(K, width_px, height_px, REF_TO_CAM.copy(), np.zeros(5))


def frame(
    rng: np.random.Generator,
    n_boxes: int = 3,
    width_px: int = 640,
    height_px: int = 360,
    max_range_m: float = 35.0,
) -> SyntheticFrame:
    """Cars in front of the camera, drawn into the image and seen by the radar."""
    cam = camera(width_px, height_px)
    boxes = np.zeros(n_boxes, GT_BOX_DTYPE)
    boxes["class_id"] = CLASS_NAMES.index("car")
    boxes["track_id"] = np.arange(n_boxes)
    boxes["x"] = rng.uniform(6, max_range_m, n_boxes)
    boxes["y"] = rng.uniform(-0.3, 0.3, n_boxes) * boxes["x"]
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
        p = np.zeros(12, RADAR_POINT_DTYPE)
        p["x"] = b["x"] - b["l"] / 2 * np.abs(np.cos(b["yaw"])) + rng.normal(0, 0.3, 12)
        p["y"] = b["y"] + rng.normal(0, 0.5, 12)
        p["z"] = b["z"] + rng.normal(0, 0.3, 12)
        p["v_r"] = b["vx"]
        p["rcs"] = rng.uniform(45, 60, 12)
        points.append(p)
    clutter = np.zeros(20, RADAR_POINT_DTYPE)
    clutter["x"] = rng.uniform(5, 50, 20)
    clutter["y"] = rng.uniform(-15, 15, 20)
    clutter["z"] = rng.uniform(-1.5, 2.0, 20)
    clutter["rcs"] = rng.uniform(35, 45, 20)
    points.append(clutter)
    return SyntheticFrame(FrameInputs(image, np.concatenate(points), cam), boxes)


def tiny_config(**overrides: object) -> ModelConfig:
    """A small model for fast tests: 128x96 input, a 12.8 m x 12.8 m grid, narrow layers."""
    values: dict = {
        "input_w": 128,
        "input_h": 96,
        "x_range_m": (0.0, 25.6),
        "y_range_m": (-12.8, 12.8),
        "raster_cell_m": 0.8,
        "image_channels": 16,
        "lift_channels": 8,
        "bev_channels": 16,
        "lift_heights_m": (-0.5, 0.5),
        "vae_hidden": 32,
        "vae_latent": 8,
    }
    values.update(overrides)
    return ModelConfig(**values)
