"""Per-frame preprocessing on the fusion node's hot path: the radar raster and the image tensor.

This module owns turning a synced camera frame and its radar points into the model's inputs:

- `radar_bev_raster`: radar points on a bird's-eye-view grid (`BEV_RASTER_CHANNELS`): how many
  points each cell holds, how strongly they reflect, how high above the ground they sit and how
  fast they move radially;
- `project_points`: reference-frame points to pixels and depth;
- `prepare_image`: a BGR uint8 frame resized and normalised to the model's float CHW input.

Each has a Numba kernel (in `fusion.perception._kernels`, compiled with ``cache=True``) and a
plain numpy ``*_reference`` twin with the same signature that the tests hold it to. Points with a
NaN/inf field are skipped (count them with `invalid_point_mask`). Call `warm_up` once at node
start so the first frame does not pay the compile/cache-load pause.

Grid conventions. BEV row 0 is the far edge (``x = x_max``) and column 0 the left edge
(``y = y_max``), so forward is up as in a map; cell ``(row, col)`` covers
``x in (x_max - (row + 1) * cell, x_max - row * cell]`` and likewise for y.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from fusion.perception import _kernels
from fusion.perception._kernels import MIN_DEPTH_M
from fusion.wire.messages import RADAR_POINT_DTYPE

__all__ = [
    "BEV_RASTER_CHANNELS",
    "IMAGE_BACKEND",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "MIN_DEPTH_M",
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
    "warm_up",
]

#: Bird's-eye-view raster channels, in order; empty cells are 0 everywhere.
#:
#: - ``occupancy``: 1 where any point falls in the cell;
#: - ``log_count``: log(1 + points in the cell);
#: - ``rcs_mean``, ``rcs_max``: the points' RCS (or magnitude) as (rcs - offset) / scale;
#: - ``height_mean``, ``height_min``, ``height_max``: metres above the ground plane
#:   z = a + b * x (a radar pitched down sees the road rise with range);
#: - ``v_r_mean``, ``v_r_abs_max``: radial velocity / its scale (+ = receding).
BEV_RASTER_CHANNELS: tuple[str, ...] = (
    "occupancy",
    "log_count",
    "rcs_mean",
    "rcs_max",
    "height_mean",
    "height_min",
    "height_max",
    "v_r_mean",
    "v_r_abs_max",
)
#: Defaults of `radar_bev_raster`'s normalisation: (rcs offset, rcs scale) and the v_r scale.
DEFAULT_RCS_NORM: tuple[float, float] = (50.0, 10.0)
DEFAULT_V_R_SCALE_MPS = 5.0

#: RGB mean and standard deviation in pixel units, EfficientNet-Lite's preprocessing (the image
#: branch's ImageNet weights expect it): ``out = (pixel - mean) / std``.
IMAGE_MEAN: tuple[float, float, float] = (127.0, 127.0, 127.0)
IMAGE_STD: tuple[float, float, float] = (128.0, 128.0, 128.0)

#: Which `prepare_image` implementation is used by default: the faster one as measured by
#: ``benchmarks/test_preprocess.py`` (group ``prepare_image``) on the project's 2-core CPU.
IMAGE_BACKEND = "opencv"

_IMAGE_GAIN = np.array([1.0 / s for s in IMAGE_STD], dtype=np.float32)
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
    x_range_m: tuple[float, float] = (0.0, 51.2),
    y_range_m: tuple[float, float] = (-25.6, 25.6),
    cell_m: float = 0.4,
    ground_plane: tuple[float, float] = (0.0, 0.0),
    rcs_norm: tuple[float, float] = DEFAULT_RCS_NORM,
    v_r_scale_mps: float = DEFAULT_V_R_SCALE_MPS,
) -> np.ndarray:
    """Bird's-eye-view raster of radar points (reference frame); float32
    (len(BEV_RASTER_CHANNELS), rows, cols) with the shape of `bev_grid_shape`. Heights are
    measured above the plane z = ground_plane[0] + ground_plane[1] * x."""
    rows, cols = bev_grid_shape(x_range_m, y_range_m, cell_m)
    x, y, z, v_r, rcs = _columns(points)
    out = np.zeros((len(BEV_RASTER_CHANNELS), rows, cols), np.float32)
    _kernels.bev_raster(
        x,
        y,
        z,
        v_r,
        rcs,
        float(x_range_m[1]),
        float(y_range_m[1]),
        float(cell_m),
        _bev_params(ground_plane, rcs_norm, v_r_scale_mps),
        out,
        _scratch(rows * cols),
    )
    return out


_SCRATCH = threading.local()


def _scratch(cells: int) -> np.ndarray:
    """The raster kernel's per-cell accumulators (`_kernels.BEV_ACC_EMPTY` between calls: the
    kernel resets the cells it used), kept per thread and grid size between frames."""
    acc = getattr(_SCRATCH, "acc", None)
    if acc is None or acc.shape[0] != cells:
        acc = _SCRATCH.acc = np.tile(np.array(_kernels.BEV_ACC_EMPTY), (cells, 1))
    return acc


def _bev_params(
    ground_plane: tuple[float, float], rcs_norm: tuple[float, float], v_r_scale_mps: float
) -> np.ndarray:
    if rcs_norm[1] <= 0 or v_r_scale_mps <= 0:
        raise ValueError(f"rcs scale {rcs_norm[1]} and v_r scale {v_r_scale_mps} must be > 0")
    return np.array([*ground_plane, *rcs_norm, v_r_scale_mps], np.float64)


def radar_bev_raster_reference(
    points: np.ndarray,
    x_range_m: tuple[float, float] = (0.0, 51.2),
    y_range_m: tuple[float, float] = (-25.6, 25.6),
    cell_m: float = 0.4,
    ground_plane: tuple[float, float] = (0.0, 0.0),
    rcs_norm: tuple[float, float] = DEFAULT_RCS_NORM,
    v_r_scale_mps: float = DEFAULT_V_R_SCALE_MPS,
) -> np.ndarray:
    """Numpy twin of `radar_bev_raster`."""
    rows, cols = bev_grid_shape(x_range_m, y_range_m, cell_m)
    a, b, rcs_offset, rcs_scale, v_scale = _bev_params(ground_plane, rcs_norm, v_r_scale_mps)
    x, y, z, v_r, rcs = (
        c[~invalid_point_mask(points)].astype(np.float64) for c in _columns(points)
    )
    row = np.floor((float(x_range_m[1]) - x) / float(cell_m))
    col = np.floor((float(y_range_m[1]) - y) / float(cell_m))
    inside = (row >= 0) & (col >= 0) & (row <= rows - 1) & (col <= cols - 1)
    cell = row[inside].astype(np.int64) * cols + col[inside].astype(np.int64)
    x, z, v_r, rcs = x[inside], z[inside], v_r[inside], rcs[inside]
    r = (rcs - rcs_offset) / rcs_scale
    h = z - (a + b * x)
    v = v_r / v_scale
    size = rows * cols
    count = np.bincount(cell, minlength=size)

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(cell, weights=values, minlength=size)

    def extreme(values: np.ndarray, ufunc: np.ufunc, start: float) -> np.ndarray:
        out = np.full(size, start)
        ufunc.at(out, cell, values)
        return out

    hit = count > 0
    n = count[hit]
    channels = (
        np.ones(len(n)),
        np.log1p(n.astype(np.float64)),
        total(r)[hit] / n,
        extreme(r, np.maximum, -np.inf)[hit],
        total(h)[hit] / n,
        extreme(h, np.minimum, np.inf)[hit],
        extreme(h, np.maximum, -np.inf)[hit],
        total(v)[hit] / n,
        extreme(np.abs(v), np.maximum, 0.0)[hit],
    )
    out = np.zeros((len(BEV_RASTER_CHANNELS), rows, cols), np.float32)
    flat = out.reshape(len(BEV_RASTER_CHANNELS), -1)
    for k, values in enumerate(channels):
        flat[k, hit] = values
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
        radar_bev_raster(points, (0.0, 4.0), (-2.0, 2.0), 1.0)
        project_points(xyz, ref_to_cam, K)
        prepare_image_numba(image, 2, 2)
        prepare_image_opencv(image, 2, 2)
