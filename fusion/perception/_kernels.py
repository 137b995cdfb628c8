"""Numba kernels behind `fusion.perception.preprocess` (private; call them through that module).

Every kernel has a plain numpy twin in `fusion.perception.preprocess` that it is tested against, and
both evaluate the same floating-point expressions in the same order (no ``fastmath``), so results
agree exactly except where a docstring says otherwise. Kernels are compiled with ``cache=True``: the
first process compiles and writes the cache next to this file (or in numba's user cache directory
when that is read-only); later processes load it in milliseconds, and
`fusion.perception.preprocess.warm_up` does that load before a node's first frame.

Radar point columns arrive as strided float32 views of a `RADAR_POINT_DTYPE` array (layout
``A``), so each kernel compiles once for the one layout every caller uses.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: Points nearer than this along the optical axis (m) count as behind the camera.
MIN_DEPTH_M = 0.1


@njit(cache=True)
def _finite5(x, y, z, a, b):
    return (
        math.isfinite(x)
        and math.isfinite(y)
        and math.isfinite(z)
        and math.isfinite(a)
        and math.isfinite(b)
    )


@njit(cache=True, inline="always")
def _to_camera(ref_to_cam, x, y, z):
    """A reference-frame point in camera coordinates (float64)."""
    px = np.float64(x)
    py = np.float64(y)
    pz = np.float64(z)
    cx = ref_to_cam[0, 0] * px + ref_to_cam[0, 1] * py + ref_to_cam[0, 2] * pz + ref_to_cam[0, 3]
    cy = ref_to_cam[1, 0] * px + ref_to_cam[1, 1] * py + ref_to_cam[1, 2] * pz + ref_to_cam[1, 3]
    cz = ref_to_cam[2, 0] * px + ref_to_cam[2, 1] * py + ref_to_cam[2, 2] * pz + ref_to_cam[2, 3]
    return cx, cy, cz


@njit(cache=True)
def project_points(x, y, z, ref_to_cam, K, uv, depth):
    """Fill ``uv`` (N, 2) and ``depth`` (N,); NaN pixels for points behind the camera."""
    n = x.shape[0]
    for i in range(n):
        cx, cy, cz = _to_camera(ref_to_cam, x[i], y[i], z[i])
        depth[i] = cz
        if cz > MIN_DEPTH_M:
            w = K[2, 0] * cx + K[2, 1] * cy + K[2, 2] * cz
            uv[i, 0] = (K[0, 0] * cx + K[0, 1] * cy + K[0, 2] * cz) / w
            uv[i, 1] = (K[1, 0] * cx + K[1, 1] * cy + K[1, 2] * cz) / w
        else:
            uv[i, 0] = np.nan
            uv[i, 1] = np.nan


@njit(cache=True)
def image_raster(
    x, y, z, v_r, rcs, ref_to_cam, K, stride, half_w_m, half_h_m, scales, out, best_depth
):
    """Rasterise radar pillars into ``out`` (4, H, W), nearest point per cell (ties: the
    earlier point); non-finite points are skipped. ``best_depth`` (H, W) is scratch."""
    grid_h = out.shape[1]
    grid_w = out.shape[2]
    out[:] = 0.0
    best_depth[:] = np.inf
    for i in range(x.shape[0]):
        if not _finite5(x[i], y[i], z[i], v_r[i], rcs[i]):
            continue
        cx, cy, cz = _to_camera(ref_to_cam, x[i], y[i], z[i])
        if not cz > MIN_DEPTH_M:
            continue
        w = K[2, 0] * cx + K[2, 1] * cy + K[2, 2] * cz
        u = (K[0, 0] * cx + K[0, 1] * cy + K[0, 2] * cz) / w
        v = (K[1, 0] * cx + K[1, 1] * cy + K[1, 2] * cz) / w
        du = K[0, 0] * half_w_m / cz
        dv = K[1, 1] * half_h_m / cz
        gx0 = np.floor((u - du) / stride)
        gx1 = np.floor((u + du) / stride)
        gy0 = np.floor((v - dv) / stride)
        gy1 = np.floor((v + dv) / stride)
        if gx1 < 0.0 or gy1 < 0.0 or gx0 > grid_w - 1 or gy0 > grid_h - 1:
            continue
        ix0 = int(max(gx0, 0.0))
        ix1 = int(min(gx1, grid_w - 1.0))
        iy0 = int(max(gy0, 0.0))
        iy1 = int(min(gy1, grid_h - 1.0))
        d_val = np.float32(cz * scales[1])
        v_val = np.float32(v_r[i] * scales[2])
        r_val = np.float32(rcs[i] * scales[3])
        for gy in range(iy0, iy1 + 1):
            for gx in range(ix0, ix1 + 1):
                if cz < best_depth[gy, gx]:
                    best_depth[gy, gx] = cz
                    out[0, gy, gx] = 1.0
                    out[1, gy, gx] = d_val
                    out[2, gy, gx] = v_val
                    out[3, gy, gx] = r_val


@njit(cache=True)
def bev_raster(x, y, z, v_r, rcs, x_max_m, y_max_m, cell_m, scales, out):
    """Bird's-eye-view raster into ``out`` (5, H, W): occupancy, count, mean z, mean v_r,
    max rcs (each times its scale); non-finite points are skipped."""
    grid_h = out.shape[1]
    grid_w = out.shape[2]
    count = np.zeros((grid_h, grid_w), np.int64)
    sum_z = np.zeros((grid_h, grid_w), np.float64)
    sum_v = np.zeros((grid_h, grid_w), np.float64)
    max_rcs = np.full((grid_h, grid_w), -np.inf)
    for i in range(x.shape[0]):
        if not _finite5(x[i], y[i], z[i], v_r[i], rcs[i]):
            continue
        row_f = np.floor((x_max_m - np.float64(x[i])) / cell_m)
        col_f = np.floor((y_max_m - np.float64(y[i])) / cell_m)
        if row_f < 0.0 or col_f < 0.0 or row_f > grid_h - 1 or col_f > grid_w - 1:
            continue
        row = int(row_f)
        col = int(col_f)
        count[row, col] += 1
        sum_z[row, col] += z[i]
        sum_v[row, col] += v_r[i]
        if rcs[i] > max_rcs[row, col]:
            max_rcs[row, col] = rcs[i]
    out[:] = 0.0
    for row in range(grid_h):
        for col in range(grid_w):
            c = count[row, col]
            if c > 0:
                out[0, row, col] = 1.0
                out[1, row, col] = c * scales[1]
                out[2, row, col] = sum_z[row, col] / c * scales[2]
                out[3, row, col] = sum_v[row, col] / c * scales[3]
                out[4, row, col] = max_rcs[row, col] * scales[4]


@njit(cache=True)
def _bilinear_taps(n_in, n_out):
    """Source taps and weights of a half-pixel-centred bilinear resize along one axis."""
    i0 = np.empty(n_out, np.int64)
    i1 = np.empty(n_out, np.int64)
    frac = np.empty(n_out, np.float32)
    ratio = n_in / n_out
    for d in range(n_out):
        s = (d + 0.5) * ratio - 0.5
        if s < 0.0:
            s = 0.0
        lo = math.floor(s)
        if lo >= n_in - 1:
            lo = n_in - 1
            s = lo
        i0[d] = lo
        i1[d] = min(lo + 1, n_in - 1)
        frac[d] = s - lo
    return i0, i1, frac


@njit(cache=True)
def prepare_image(image_bgr, gain, bias, out):
    """Resize (bilinear) ``image_bgr`` (H, W, 3) uint8 into ``out`` (3, h, w) float32 as RGB,
    each channel ``value * gain[c] + bias[c]``.

    Serial on purpose: a row-parallel version (``prange``) measured 0.36 ms at best but a
    16 ms median for 1280x720 -> 448x256 on the 2-core machine while other processes ran,
    against 1.0 ms serial; OpenMP threads stall when the cores are shared with the other nodes.
    """
    out_h = out.shape[1]
    out_w = out.shape[2]
    y0, y1, fy = _bilinear_taps(image_bgr.shape[0], out_h)
    x0, x1, fx = _bilinear_taps(image_bgr.shape[1], out_w)
    one = np.float32(1.0)
    for r in range(out_h):
        wy = fy[r]
        top = y0[r]
        bot = y1[r]
        for col in range(out_w):
            wx = fx[col]
            left = x0[col]
            right = x1[col]
            for c in range(3):
                src = 2 - c
                t = (
                    np.float32(image_bgr[top, left, src]) * (one - wx)
                    + np.float32(image_bgr[top, right, src]) * wx
                )
                b = (
                    np.float32(image_bgr[bot, left, src]) * (one - wx)
                    + np.float32(image_bgr[bot, right, src]) * wx
                )
                out[c, r, col] = (t * (one - wy) + b * wy) * gain[c] + bias[c]
