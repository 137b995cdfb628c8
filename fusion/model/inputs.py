"""From one synced frame to the network's input arrays: the one path training and serving share.

`fusion.perception.frame.FrameInputs` is what the fusion node has after sync and motion
compensation: the camera image (BGR), the radar points in the reference frame and the camera
model. `encode_inputs` turns it into numpy arrays:

- ``image`` (3, H, W) float32: resized and normalised by
  `fusion.perception.preprocess.prepare_image`;
- ``raster`` (9, X, Y) float32: the radar points on the BEV grid, by the Numba kernel behind
  `fusion.perception.preprocess.radar_bev_raster`;
- ``grid`` (Z, x, y, 2) float32: where each head cell's centre projects into the image at each
  lift height, in ``grid_sample``'s [-1, 1] coordinates (-2 outside or behind the camera);
  it depends only on the camera model, so `LiftGridCache` computes it once per calibration.

`fusion.learn` builds its training samples with the same function from the same `FrameInputs`
the node assembles, so what a model is trained on is what it is served.
"""

from __future__ import annotations

import numpy as np

from fusion.model.config import ModelConfig
from fusion.perception.frame import FrameInputs
from fusion.perception.geometry import CameraModel
from fusion.perception.preprocess import prepare_image, radar_bev_raster

#: Cells whose centre is nearer than this to the camera along its axis are not sampled.
MIN_LIFT_DEPTH_M = 0.5


def head_cell_centres(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) ground-plane centres of the head grid's cells, each (rows, cols): row 0 at the
    far edge (x max), column 0 at the left edge (y max), as the radar raster."""
    rows, cols = cfg.grid_shape("head")
    cell = cfg.head_cell_m
    xs = cfg.x_range_m[1] - (np.arange(rows) + 0.5) * cell
    ys = cfg.y_range_m[1] - (np.arange(cols) + 0.5) * cell
    return np.meshgrid(xs, ys, indexing="ij")


def lift_grid(camera: CameraModel, cfg: ModelConfig) -> np.ndarray:
    """(Z, rows, cols, 2) float32 ``grid_sample`` coordinates of each head cell's centre at each
    lift height above the ground plane, for `camera` at any image size (the grid is in
    normalised image coordinates); -2 where it projects outside the image or behind it."""
    x, y = head_cell_centres(cfg)
    a, b = cfg.ground_plane
    out = np.empty((len(cfg.lift_heights_m), *x.shape, 2), np.float32)
    for k, height in enumerate(cfg.lift_heights_m):
        xyz = np.stack([x.ravel(), y.ravel(), a + b * x.ravel() + height], axis=1)
        uv, depth = camera.project(xyz)
        with np.errstate(invalid="ignore"):
            u = (uv[:, 0] + 0.5) / camera.width_px * 2.0 - 1.0  # pixel centres, half-pixel
            v = (uv[:, 1] + 0.5) / camera.height_px * 2.0 - 1.0
            ok = np.isfinite(u) & np.isfinite(v) & (depth > MIN_LIFT_DEPTH_M)
            ok &= (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
        out[k, ..., 0] = np.where(ok, u, -2.0).reshape(x.shape)
        out[k, ..., 1] = np.where(ok, v, -2.0).reshape(x.shape)
    return out


class LiftGridCache:
    """`lift_grid` per camera model, recomputed only when the calibration changes."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self._key: tuple | None = None
        self._grid: np.ndarray | None = None

    def __call__(self, camera: CameraModel) -> np.ndarray:
        key = (
            camera.K.tobytes(),
            camera.ref_to_cam.tobytes(),
            camera.width_px,
            camera.height_px,
        )
        if key != self._key or self._grid is None:
            self._grid = lift_grid(camera, self.cfg)
            self._key = key
        return self._grid


def radar_raster(points: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The radar BEV raster the model was configured for, (9, X, Y) float32."""
    return radar_bev_raster(
        points,
        x_range_m=cfg.x_range_m,
        y_range_m=cfg.y_range_m,
        cell_m=cfg.raster_cell_m,
        ground_plane=cfg.ground_plane,
        rcs_norm=(cfg.rcs_offset, cfg.rcs_scale),
        v_r_scale_mps=cfg.v_r_scale_mps,
    )


def encode_image(image_bgr: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The image input, (3, H, W) float32 normalised RGB at the model's input size."""
    return prepare_image(image_bgr, cfg.input_w, cfg.input_h)


def encode_inputs(
    frame: FrameInputs, cfg: ModelConfig, grids: LiftGridCache | None = None
) -> dict[str, np.ndarray]:
    """The network's inputs for one frame (no batch axis): ``image``, ``raster``, ``grid``."""
    grid = grids(frame.camera) if grids is not None else lift_grid(frame.camera, cfg)
    return {
        "image": encode_image(frame.image_bgr, cfg),
        "raster": radar_raster(frame.points, cfg),
        "grid": grid,
    }
