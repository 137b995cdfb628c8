"""Arithmetic that gives the same bits on every x86-64 CPU, for what the simulator writes.

A seeded drive must be byte-identical on any machine (the shipped recordings are checked byte
for byte). Three things in numpy are not: its vectorised transcendental functions (``sin``,
``cos``, ``arctan2``, ``exp``, ``arcsin``, ``power`` ...) have CPU-specific code paths chosen at
run time, and the AVX-512 and AVX2 ones differ by an ULP here and there; matrix products
(``@``, ``einsum``, ``dot``) go to BLAS or SIMD kernels whose summation order (and use of fused
multiply-add) depends on the CPU; and so does anything built on them (``linalg.norm``). What
does not vary: elementwise ``+ - * /`` and ``sqrt`` (exact IEEE operations, one ufunc each, so
never fused), comparisons, ``min``/``max``/``clip``, ``interp``, ``cumsum`` (sequential), and
sums (numpy's pairwise summation has a fixed order).

So the simulator computes with these instead: Python's `math` per element (the C library's
scalar functions, the same code whatever the vector width) and small matrix products written
out term by term, left to right. They are slower than numpy's, which does not matter at the
sizes the simulator uses (hundreds to a few thousand elements per message).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _elementwise(fn: Callable[..., float], *args: object) -> np.ndarray:
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in args))
    flat = [a.ravel().tolist() for a in arrays]
    out = np.fromiter(map(fn, *flat), dtype=np.float64, count=arrays[0].size)
    return out.reshape(arrays[0].shape)


def sin(x: object) -> np.ndarray:
    return _elementwise(math.sin, x)


def cos(x: object) -> np.ndarray:
    return _elementwise(math.cos, x)


def tan(x: object) -> np.ndarray:
    return _elementwise(math.tan, x)


def exp(x: object) -> np.ndarray:
    return _elementwise(math.exp, x)


def arcsin(x: object) -> np.ndarray:
    return _elementwise(math.asin, x)


def arctan2(y: object, x: object) -> np.ndarray:
    return _elementwise(math.atan2, y, x)


def hypot(x: object, y: object) -> np.ndarray:
    return _elementwise(math.hypot, x, y)


def power(x: object, exponent: float) -> np.ndarray:
    return _elementwise(lambda v: math.pow(v, exponent), x)


def dot_last(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum of ``a * b`` over the last axis (broadcast), term by term from the first."""
    prod = np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)
    out = prod[..., 0].copy()
    for k in range(1, prod.shape[-1]):
        out = out + prod[..., k]
    return out


def norm_last(a: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis."""
    return np.sqrt(dot_last(a, a))


def apply(matrix: np.ndarray, points: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """``points @ matrix.T (+ offset)`` for points (..., K) and a small (M, K) matrix, or a stack
    of matrices (..., M, K) matching the points' leading axes: (..., M)."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    rows = [dot_last(m[..., i, :], p) for i in range(m.shape[-2])]
    out = np.stack(rows, axis=-1)
    return out if offset is None else out + np.asarray(offset, dtype=np.float64)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for small 2-D matrices."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return apply(a, b.T).T


def rotation_z(yaw_rad: float) -> np.ndarray:
    """3x3 rotation about z by `yaw_rad`."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
