"""Per-frame preprocessing on the fusion node's hot path: radar rasters and the image tensor.

This module owns turning a synced camera frame and its radar points into the model's inputs:

- `radar_image_raster`: radar points as CenterFusion-style pillars on the image plane, at the
  model's feature stride, one channel per entry of `RADAR_RASTER_CHANNELS`;
- `radar_bev_raster`: radar points on a bird's-eye-view grid (`BEV_RASTER_CHANNELS`);
- `project_points`: reference-frame points to pixels and depth;
- `prepare_image`: a BGR uint8 frame resized and normalised to the model's float CHW input.

Each has a Numba kernel (in `fusion.perception._kernels`, compiled with ``cache=True``) and a plain
numpy ``*_reference`` twin with the same signature that the tests hold it to. Points with a NaN/inf
field are skipped (count them with `invalid_point_mask`), and so are points at or behind the
camera (depth <= `MIN_DEPTH_M`) and pillars wholly outside the grid. Call `warm_up` once at node
start so the first frame does not pay the compile/cache-load pause.

Grid conventions. Image raster cell ``(row, col)`` covers input pixels
``[col*stride, (col+1)*stride) x [row*stride, (row+1)*stride)`` of the image ``K`` describes
(the model's input size, ``grid_w*stride`` x ``grid_h*stride``). BEV row 0 is the far edge
(``x = x_max``) and column 0 the left edge (``y = y_max``), so forward is up as in a map.
"""

from __future__ import annotations

import cv2
import numpy as np

from fusion.perception import _kernels
from fusion.perception._kernels import MIN_DEPTH_M
from fusion.wire.messages import RADAR_POINT_DTYPE

__all__ = [
    "BEV_RASTER_CHANNELS",
    "BEV_RASTER_SCALES",
    "DEFAULT_PILLAR_SIZE_M",
    "IMAGE_BACKEND",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "MIN_DEPTH_M",
    "RADAR_RASTER_CHANNELS",
    "RADAR_RASTER_SCALES",
    "bev_grid_shape",
    "invalid_point_mask",
    "prepare_image",
    "prepare_image_numba",
    "prepare_image_opencv",
    "prepare_image_reference",
    "project_points",
    "project_points_reference",
    "radar_bev_raster",
    "radar_bev_raster_reference",
    "radar_image_raster",
    "radar_image_raster_reference",
    "warm_up",
]

#: Image-plane raster channels, in order. A cell covered by no pillar is 0 in every channel;
#: where pillars overlap, the point nearest the camera (smallest depth) wins the whole cell.
#:
#: - ``occupancy``: 1 where a pillar covers the cell;
#: - ``depth``: the point's depth along the optical axis in metres / `DEPTH_NORM_M` (50 m -> 1);
#: - ``v_r``: Doppler radial velocity in m/s / `VELOCITY_NORM_MPS` (20 m/s -> 1, + = receding);
#: - ``rcs``: RCS in dBsm (or the sensor's magnitude) / `RCS_NORM_DB` (50 -> 1).
RADAR_RASTER_CHANNELS: tuple[str, ...] = ("occupancy", "depth", "v_r", "rcs")

DEPTH_NORM_M = 50.0
VELOCITY_NORM_MPS = 20.0
RCS_NORM_DB = 50.0
#: BEV ``count`` channel: points per cell / this.
BEV_COUNT_NORM = 8.0
#: BEV ``z`` channel: mean height in metres / this.
HEIGHT_NORM_M = 4.0

#: Multipliers applied to each `RADAR_RASTER_CHANNELS` value.
RADAR_RASTER_SCALES: tuple[float, ...] = (
    1.0,
    1.0 / DEPTH_NORM_M,
    1.0 / VELOCITY_NORM_MPS,
    1.0 / RCS_NORM_DB,
)
_RASTER_SCALES = np.asarray(RADAR_RASTER_SCALES, np.float64)  # built once, not per frame

#: Bird's-eye-view raster channels, in order; empty cells are 0 everywhere.
#:
#: - ``occupancy``: 1 where any point falls in the cell;
#: - ``count``: number of points / `BEV_COUNT_NORM` (not clipped);
#: - ``z``: mean height of the cell's points in metres / `HEIGHT_NORM_M`;
#: - ``v_r``: mean radial velocity in m/s / `VELOCITY_NORM_MPS`;
#: - ``rcs``: largest RCS / `RCS_NORM_DB`.
BEV_RASTER_CHANNELS: tuple[str, ...] = ("occupancy", "count", "z", "v_r", "rcs")

BEV_RASTER_SCALES: tuple[float, ...] = (
    1.0,
    1.0 / BEV_COUNT_NORM,
    1.0 / HEIGHT_NORM_M,
    1.0 / VELOCITY_NORM_MPS,
    1.0 / RCS_NORM_DB,
)

#: Pillar (width, height) in metres that each radar point is expanded to, centred on the point
#: and facing the camera; CenterFusion's 0.2 m x 1.5 m. Centred rather than standing on the
#: point because a 4D radar measures elevation.
DEFAULT_PILLAR_SIZE_M: tuple[float, float] = (0.2, 1.5)

#: Per-channel RGB mean and standard deviation on the [0, 1] scale (ImageNet's, which the
#: pretrained image backbones expect): ``out = (pixel / 255 - mean) / std``.
IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Which `prepare_image` implementation is used by default: the faster one as measured by
#: ``benchmarks/test_preprocess.py`` (group ``prepare_image``) on the project's 2-core CPU.
IMAGE_BACKEND = "opencv"

_IMAGE_GAIN = np.array([1.0 / (255.0 * s) for s in IMAGE_STD], dtype=np.float32)
_IMAGE_BIAS = np.array([-m / s for m, s in zip(IMAGE_MEAN, IMAGE_STD, strict=True)], np.float32)


def _columns(points: np.ndarray) -> tuple[np.ndarray, ...]:
    if not isinstance(points, np.ndarray) or points.dtype != RADAR_POINT_DTYPE:
        raise ValueError(
            "points must be a numpy array of fusion.wire.messages.RADAR_POINT_DTYPE, got "
            f"{getattr(points, 'dtype', type(points))}"
        )
    points = points.reshape(-1)
    return points["x"], points["y"], points["z"], points["v_r"], points["rcs"]


def _camera(ref_to_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref_to_cam = np.ascontiguousarray(ref_to_cam, dtype=np.float64)
    K = np.ascontiguousarray(K, dtype=np.float64)
    if ref_to_cam.shape != (4, 4) or K.shape != (3, 3):
        raise ValueError(f"ref_to_cam must be 4x4 and K 3x3, got {ref_to_cam.shape} and {K.shape}")
    if not (np.all(np.isfinite(ref_to_cam)) and np.all(np.isfinite(K))):
        raise ValueError("ref_to_cam and K must be finite; check the calibration")
    return ref_to_cam, K


def _check_grid(grid_h: int, grid_w: int, stride: int) -> None:
    if grid_h <= 0 or grid_w <= 0 or stride <= 0:
        raise ValueError(
            f"grid {grid_h}x{grid_w} and stride {stride} must all be positive integers"
        )


def invalid_point_mask(points: np.ndarray) -> np.ndarray:
    """(N,) bool: points with a NaN or inf in x, y, z, v_r or rcs (the rasters skip these)."""
    ok = np.ones(len(points), dtype=bool)
    for column in _columns(points):
        ok &= np.isfinite(column)
    return ~ok


def project_points(
    points_xyz: np.ndarray, ref_to_cam: np.ndarray, K: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, 3) reference-frame points with a pinhole camera (Numba).

    Returns ``(uv, depth_m)``: (N, 2) float64 pixels and (N,) float64 depth along the optical
    axis; points at or behind `MIN_DEPTH_M` (or non-finite) get NaN pixels.
    """
    ref_to_cam, K = _camera(ref_to_cam, K)
    cols = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    uv = np.empty((len(cols), 2), np.float64)
    depth = np.empty(len(cols), np.float64)
    _kernels.project_points(cols[:, 0], cols[:, 1], cols[:, 2], ref_to_cam, K, uv, depth)
    return uv, depth


def project_points_reference(
    points_xyz: np.ndarray, ref_to_cam: np.ndarray, K: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of `project_points`."""
    ref_to_cam, K = _camera(ref_to_cam, K)
    cols = np.asarray(points_xyz).reshape(-1, 3).astype(np.float64, copy=False)
    cx, cy, cz = _to_camera(cols[:, 0], cols[:, 1], cols[:, 2], ref_to_cam)
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = _to_pixels(cx, cy, cz, K)
    uv = np.stack([u, v], axis=1)
    with np.errstate(invalid="ignore"):
        uv[~(cz > MIN_DEPTH_M)] = np.nan
    return uv, cz


def _to_camera(x, y, z, T):
    # Written out term by term, in the kernels' order, so both round identically.
    cx = T[0, 0] * x + T[0, 1] * y + T[0, 2] * z + T[0, 3]
    cy = T[1, 0] * x + T[1, 1] * y + T[1, 2] * z + T[1, 3]
    cz = T[2, 0] * x + T[2, 1] * y + T[2, 2] * z + T[2, 3]
    return cx, cy, cz


def _to_pixels(cx, cy, cz, K):
    w = K[2, 0] * cx + K[2, 1] * cy + K[2, 2] * cz
    return (K[0, 0] * cx + K[0, 1] * cy + K[0, 2] * cz) / w, (
        K[1, 0] * cx + K[1, 1] * cy + K[1, 2] * cz
    ) / w


def radar_image_raster(
    points: np.ndarray,
    ref_to_cam: np.ndarray,
    K: np.ndarray,
    grid_h: int,
    grid_w: int,
    stride: int,
    pillar_size_m: tuple[float, float] = DEFAULT_PILLAR_SIZE_M,
) -> np.ndarray:
    """Rasterise radar points as pillars onto the image plane at the model's feature stride.

    `points` is (N,) `RADAR_POINT_DTYPE` in the reference (radar) frame, `ref_to_cam` the 4x4
    reference -> camera transform and `K` the intrinsics at the model's input size. Each point
    becomes a camera-facing rectangle of `pillar_size_m` (width, height) metres centred on it;
    every cell the rectangle touches gets the point's values, the nearest point winning where
    rectangles overlap (ties: the earlier point). Returns float32
    (len(RADAR_RASTER_CHANNELS), grid_h, grid_w).
    """
    _check_grid(grid_h, grid_w, stride)
    x, y, z, v_r, rcs = _columns(points)
    ref_to_cam, K = _camera(ref_to_cam, K)
    out = np.empty((len(RADAR_RASTER_CHANNELS), grid_h, grid_w), np.float32)
    scratch = np.empty((grid_h, grid_w), np.float64)
    _kernels.image_raster(
        x,
        y,
        z,
        v_r,
        rcs,
        ref_to_cam,
        K,
        int(stride),
        float(pillar_size_m[0]) / 2.0,
        float(pillar_size_m[1]) / 2.0,
        _RASTER_SCALES,
        out,
        scratch,
    )
    return out


def radar_image_raster_reference(
    points: np.ndarray,
    ref_to_cam: np.ndarray,
    K: np.ndarray,
    grid_h: int,
    grid_w: int,
    stride: int,
    pillar_size_m: tuple[float, float] = DEFAULT_PILLAR_SIZE_M,
) -> np.ndarray:
    """Numpy twin of `radar_image_raster` (vectorised: expand pillars to (point, cell) pairs,
    sort by cell, depth and point index, keep the first pair of each cell)."""
    _check_grid(grid_h, grid_w, stride)
    x, y, z, v_r, rcs = _columns(points)
    ref_to_cam, K = _camera(ref_to_cam, K)
    out = np.zeros((len(RADAR_RASTER_CHANNELS), grid_h, grid_w), np.float32)
    finite = ~invalid_point_mask(points)
    idx = np.flatnonzero(finite)
    cx, cy, cz = _to_camera(
        x[idx].astype(np.float64), y[idx].astype(np.float64), z[idx].astype(np.float64), ref_to_cam
    )
    in_front = cz > MIN_DEPTH_M
    idx, cx, cy, cz = idx[in_front], cx[in_front], cy[in_front], cz[in_front]
    u, v = _to_pixels(cx, cy, cz, K)
    du = K[0, 0] * (float(pillar_size_m[0]) / 2.0) / cz
    dv = K[1, 1] * (float(pillar_size_m[1]) / 2.0) / cz
    gx0, gx1 = np.floor((u - du) / stride), np.floor((u + du) / stride)
    gy0, gy1 = np.floor((v - dv) / stride), np.floor((v + dv) / stride)
    touches = (gx1 >= 0) & (gy1 >= 0) & (gx0 <= grid_w - 1) & (gy0 <= grid_h - 1)
    keep = np.flatnonzero(touches)
    ix0 = np.maximum(gx0[keep], 0).astype(np.int64)
    ix1 = np.minimum(gx1[keep], grid_w - 1).astype(np.int64)
    iy0 = np.maximum(gy0[keep], 0).astype(np.int64)
    iy1 = np.minimum(gy1[keep], grid_h - 1).astype(np.int64)
    n_x = ix1 - ix0 + 1
    n_cells = n_x * (iy1 - iy0 + 1)
    if n_cells.sum() == 0:
        return out
    pair = np.repeat(np.arange(len(keep)), n_cells)
    local = np.arange(n_cells.sum()) - np.repeat(np.cumsum(n_cells) - n_cells, n_cells)
    cell = (iy0[pair] + local // n_x[pair]) * grid_w + ix0[pair] + local % n_x[pair]
    depth = cz[keep][pair]
    order = np.lexsort((pair, depth, cell))
    cell, winner = cell[order], pair[order]
    first = np.ones(len(cell), dtype=bool)
    first[1:] = cell[1:] != cell[:-1]
    cell, winner = cell[first], keep[winner[first]]
    src = idx[winner]
    flat = out.reshape(len(RADAR_RASTER_CHANNELS), -1)
    flat[0, cell] = 1.0
    flat[1, cell] = (cz[winner] * RADAR_RASTER_SCALES[1]).astype(np.float32)
    flat[2, cell] = (v_r[src].astype(np.float64) * RADAR_RASTER_SCALES[2]).astype(np.float32)
    flat[3, cell] = (rcs[src].astype(np.float64) * RADAR_RASTER_SCALES[3]).astype(np.float32)
    return out


def bev_grid_shape(
    x_range_m: tuple[float, float], y_range_m: tuple[float, float], cell_m: float
) -> tuple[int, int]:
    """(rows, cols) of the BEV grid: rows along x (forward), columns along y (left)."""
    if cell_m <= 0 or x_range_m[1] <= x_range_m[0] or y_range_m[1] <= y_range_m[0]:
        raise ValueError(
            f"BEV ranges x {x_range_m}, y {y_range_m} must be increasing and cell_m {cell_m} "
            "positive"
        )
    rows = round((x_range_m[1] - x_range_m[0]) / cell_m)
    cols = round((y_range_m[1] - y_range_m[0]) / cell_m)
    return int(rows), int(cols)


def radar_bev_raster(
    points: np.ndarray,
    x_range_m: tuple[float, float] = (0.0, 100.0),
    y_range_m: tuple[float, float] = (-40.0, 40.0),
    cell_m: float = 0.5,
) -> np.ndarray:
    """Bird's-eye-view raster of radar points (reference frame); float32
    (len(BEV_RASTER_CHANNELS), rows, cols) with the shape of `bev_grid_shape`."""
    rows, cols = bev_grid_shape(x_range_m, y_range_m, cell_m)
    x, y, z, v_r, rcs = _columns(points)
    out = np.empty((len(BEV_RASTER_CHANNELS), rows, cols), np.float32)
    _kernels.bev_raster(
        x,
        y,
        z,
        v_r,
        rcs,
        float(x_range_m[1]),
        float(y_range_m[1]),
        float(cell_m),
        np.asarray(BEV_RASTER_SCALES, np.float64),
        out,
    )
    return out


def radar_bev_raster_reference(
    points: np.ndarray,
    x_range_m: tuple[float, float] = (0.0, 100.0),
    y_range_m: tuple[float, float] = (-40.0, 40.0),
    cell_m: float = 0.5,
) -> np.ndarray:
    """Numpy twin of `radar_bev_raster`."""
    rows, cols = bev_grid_shape(x_range_m, y_range_m, cell_m)
    x, y, z, v_r, rcs = _columns(points)
    out = np.zeros((len(BEV_RASTER_CHANNELS), rows, cols), np.float32)
    finite = ~invalid_point_mask(points)
    row = np.floor((float(x_range_m[1]) - x[finite].astype(np.float64)) / float(cell_m))
    col = np.floor((float(y_range_m[1]) - y[finite].astype(np.float64)) / float(cell_m))
    inside = (row >= 0) & (col >= 0) & (row <= rows - 1) & (col <= cols - 1)
    cell = row[inside].astype(np.int64) * cols + col[inside].astype(np.int64)
    size = rows * cols
    count = np.bincount(cell, minlength=size)
    sum_z = np.bincount(cell, weights=z[finite][inside].astype(np.float64), minlength=size)
    sum_v = np.bincount(cell, weights=v_r[finite][inside].astype(np.float64), minlength=size)
    max_rcs = np.full(size, -np.inf)
    np.maximum.at(max_rcs, cell, rcs[finite][inside].astype(np.float64))
    hit = count > 0
    flat = out.reshape(len(BEV_RASTER_CHANNELS), -1)
    flat[0, hit] = 1.0
    flat[1, hit] = count[hit] * BEV_RASTER_SCALES[1]
    flat[2, hit] = sum_z[hit] / count[hit] * BEV_RASTER_SCALES[2]
    flat[3, hit] = sum_v[hit] / count[hit] * BEV_RASTER_SCALES[3]
    flat[4, hit] = max_rcs[hit] * BEV_RASTER_SCALES[4]
    return out


def _check_image(image_bgr: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    if (
        not isinstance(image_bgr, np.ndarray)
        or image_bgr.dtype != np.uint8
        or image_bgr.ndim != 3
        or image_bgr.shape[2] != 3
        or image_bgr.shape[0] == 0
        or image_bgr.shape[1] == 0
    ):
        raise ValueError(
            "image_bgr must be a non-empty (H, W, 3) uint8 array, got "
            f"{getattr(image_bgr, 'dtype', type(image_bgr))} {getattr(image_bgr, 'shape', '')}"
        )
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"output size {out_w}x{out_h} must be positive")
    return image_bgr


def prepare_image(
    image_bgr: np.ndarray, out_w: int, out_h: int, backend: str | None = None
) -> np.ndarray:
    """Resize a BGR uint8 (H, W, 3) image bilinearly (half-pixel centres, as OpenCV's
    ``INTER_LINEAR`` and torch's ``align_corners=False``) to `out_w` x `out_h` and normalise it
    to float32 RGB (3, out_h, out_w) with `IMAGE_MEAN` / `IMAGE_STD`.

    `backend` is ``"opencv"`` or ``"numba"``; None takes `IMAGE_BACKEND`, the measured faster.
    The two agree within 1/255 / min(IMAGE_STD) (OpenCV rounds the resized image to uint8).
    """
    backend = IMAGE_BACKEND if backend is None else backend
    if backend == "opencv":
        return prepare_image_opencv(image_bgr, out_w, out_h)
    if backend == "numba":
        return prepare_image_numba(image_bgr, out_w, out_h)
    raise ValueError(f"unknown image backend {backend!r}; use 'opencv' or 'numba'")


def prepare_image_numba(image_bgr: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """`prepare_image` as one fused, serial Numba pass (resize, BGR -> RGB, normalise, CHW)."""
    image_bgr = _check_image(image_bgr, out_w, out_h)
    out = np.empty((3, out_h, out_w), np.float32)
    _kernels.prepare_image(np.ascontiguousarray(image_bgr), _IMAGE_GAIN, _IMAGE_BIAS, out)
    return out


def prepare_image_opencv(image_bgr: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """`prepare_image` with ``cv2.resize`` (uint8 result) then a per-channel affine map."""
    image_bgr = _check_image(image_bgr, out_w, out_h)
    small = cv2.resize(image_bgr, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    out = np.empty((3, out_h, out_w), np.float32)
    for c in range(3):
        np.multiply(small[:, :, 2 - c], _IMAGE_GAIN[c], out=out[c], dtype=np.float32)
        out[c] += _IMAGE_BIAS[c]
    return out


def _bilinear_taps_reference(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.floor(s).astype(np.int64)
    edge = lo >= n_in - 1
    lo[edge] = n_in - 1
    s[edge] = n_in - 1
    return lo, np.minimum(lo + 1, n_in - 1), (s - lo).astype(np.float32)


def prepare_image_reference(image_bgr: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Numpy twin of `prepare_image_numba` (float32 bilinear, no intermediate rounding)."""
    image_bgr = _check_image(image_bgr, out_w, out_h)
    y0, y1, fy = _bilinear_taps_reference(image_bgr.shape[0], out_h)
    x0, x1, fx = _bilinear_taps_reference(image_bgr.shape[1], out_w)
    rgb = image_bgr[:, :, ::-1].astype(np.float32)
    one = np.float32(1.0)
    wx = fx[None, :, None]
    top = rgb[y0][:, x0] * (one - wx) + rgb[y0][:, x1] * wx
    bot = rgb[y1][:, x0] * (one - wx) + rgb[y1][:, x1] * wx
    wy = fy[:, None, None]
    value = top * (one - wy) + bot * wy
    out = value * _IMAGE_GAIN + _IMAGE_BIAS
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def warm_up() -> None:
    """Load (or, on a fresh install, compile) every kernel by running it once on tiny inputs,
    so a node pays that before its first frame rather than on it. Numba compiles a separate
    version for read-only arrays, and arrays decoded from the wire are read-only, so each kernel
    runs on both (measured: a fresh install otherwise compiles for 0.9 s on the first frame)."""
    ref_to_cam = np.array(
        [[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
    )
    K = np.array([[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]])
    for writeable in (True, False):
        points = np.zeros(2, RADAR_POINT_DTYPE)
        points["x"] = (10.0, np.nan)
        image = np.zeros((4, 4, 3), np.uint8)
        xyz = np.zeros((1, 3))
        for array in (points, image, xyz):
            array.flags.writeable = writeable
        radar_image_raster(points, ref_to_cam, K, 4, 4, 4)
        radar_bev_raster(points, (0.0, 4.0), (-2.0, 2.0), 1.0)
        project_points(xyz, ref_to_cam, K)
        prepare_image_numba(image, 2, 2)
        prepare_image_opencv(image, 2, 2)
