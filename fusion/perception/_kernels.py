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


#: A raster cell's accumulators before its first point (`bev_raster`'s ``acc`` rows between
#: calls): sum rcs, max rcs, sum height, min height, max height, sum v_r, max abs v_r, count.
BEV_ACC_EMPTY = (0.0, -np.inf, 0.0, np.inf, -np.inf, 0.0, 0.0, 0.0)


@njit(cache=True, error_model="numpy")
def bev_raster(x, y, z, v_r, rcs, x_max_m, y_max_m, cell_m, params, out, acc):
    """Bird's-eye-view raster into ``out`` (9, rows, cols), which must be zeros (numpy's
    ``np.zeros`` is several times faster than a fill here); non-finite points are skipped.

    ``params`` = (ground a, ground b, rcs offset, rcs scale, v_r scale): heights are taken
    above the plane z = a + b * x, rcs as (rcs - offset) / scale, v_r as v_r / scale. Channels:
    occupancy, log(1 + count), mean and max rcs, mean, min and max height, mean v_r, max |v_r|.
    ``acc`` (rows * cols, 8) float64, one cache line per cell, is scratch the caller keeps
    between calls (a fresh megabyte every frame costs page faults): every row must hold
    `BEV_ACC_EMPTY` on entry, and the cells used are reset to it before returning. So the point
    loop has no first-point branch, only the cells points fall in are visited, and the cost
    follows the points.
    """
    rows = out.shape[1]
    cols = out.shape[2]
    touched = np.empty(x.shape[0], np.int64)
    n_touched = 0
    for i in range(x.shape[0]):
        if not _finite5(x[i], y[i], z[i], v_r[i], rcs[i]):
            continue
        px = np.float64(x[i])
        row_f = np.floor((x_max_m - px) / cell_m)
        col_f = np.floor((y_max_m - np.float64(y[i])) / cell_m)
        if row_f < 0.0 or col_f < 0.0 or row_f > rows - 1 or col_f > cols - 1:
            continue
        cell = int(row_f) * cols + int(col_f)
        r = (np.float64(rcs[i]) - params[2]) / params[3]
        h = np.float64(z[i]) - (params[0] + params[1] * px)
        v = np.float64(v_r[i]) / params[4]
        a = acc[cell]
        touched[n_touched] = cell
        n_touched += a[7] == 0.0  # kept only on the cell's first point
        a[0] += r
        a[1] = max(a[1], r)
        a[2] += h
        a[3] = min(a[3], h)
        a[4] = max(a[4], h)
        a[5] += v
        a[6] = max(a[6], abs(v))
        a[7] += 1.0
    flat = out.reshape(9, rows * cols)
    for k in range(n_touched):
        cell = touched[k]
        a = acc[cell]
        c = a[7]
        flat[0, cell] = 1.0
        flat[1, cell] = math.log1p(c)
        flat[2, cell] = a[0] / c
        flat[3, cell] = a[1]
        flat[4, cell] = a[2] / c
        flat[5, cell] = a[3]
        flat[6, cell] = a[4]
        flat[7, cell] = a[5] / c
        flat[8, cell] = a[6]
        for j in range(8):
            a[j] = BEV_ACC_EMPTY[j]


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
