"""Preprocessing kernels: Numba against the numpy references, and image preparation against
OpenCV, in one run (ratio tables printed at the end; ratios are to the Numba column).

Run: ``.venv/bin/pytest benchmarks/test_preprocess.py --benchmark-only -q``. Targets (DESIGN.md):
rasterising 10k radar points, Numba >= 10x faster than numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusion.perception import preprocess as pp
from fusion.wire.messages import RADAR_POINT_DTYPE

MODEL_W, MODEL_H, STRIDE = 448, 256, 4
K = np.array([[400.0, 0.0, MODEL_W / 2], [0.0, 400.0, MODEL_H / 2], [0.0, 0.0, 1.0]])
REF_TO_CAM = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.3], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def radar_points(n: int) -> np.ndarray:
    """A dense 4D-radar-like scan: points from 1 to 100 m, +-45 degrees, -1..3 m high."""
    rng = np.random.default_rng(0)
    range_m = rng.uniform(1.0, 100.0, n)
    azimuth = rng.uniform(-np.pi / 4, np.pi / 4, n)
    points = np.zeros(n, RADAR_POINT_DTYPE)
    points["x"] = range_m * np.cos(azimuth)
    points["y"] = range_m * np.sin(azimuth)
    points["z"] = rng.uniform(-1.0, 3.0, n)
    points["v_r"] = rng.normal(0.0, 8.0, n)
    points["rcs"] = rng.uniform(-10.0, 40.0, n)
    return points


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    pp.warm_up()


def record(benchmark, ratios, table: str, row: str, impl: str) -> None:
    ratios.add(table, row, impl, benchmark.stats.stats.median * 1e3, baseline="numba")


BEV = {"numba": pp.radar_bev_raster, "numpy": pp.radar_bev_raster_reference}


@pytest.mark.parametrize("n_points", [1_000, 10_000, 100_000])
@pytest.mark.parametrize("impl", list(BEV))
def test_bev_raster(benchmark, ratios, impl: str, n_points: int) -> None:
    """The model's radar input: 9 channels on a 128 x 128 grid of 0.4 m cells."""
    points = radar_points(n_points)
    benchmark.group = f"BEV raster {n_points} points"
    benchmark(BEV[impl], points, ground_plane=(-0.79, 0.045))
    record(benchmark, ratios, "radar BEV raster 128x128", f"{n_points} points", impl)


PROJECT = {"numba": pp.project_points, "numpy": pp.project_points_reference}


@pytest.mark.parametrize("impl", list(PROJECT))
def test_project_points(benchmark, ratios, impl: str) -> None:
    points = radar_points(10_000)
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1).astype(np.float64)
    benchmark.group = "project 10000 points"
    benchmark(PROJECT[impl], xyz, REF_TO_CAM, K)
    record(benchmark, ratios, "project points", "10000 points", impl)


IMAGE = {
    "numba": pp.prepare_image_numba,
    "opencv": pp.prepare_image_opencv,
    "numpy": pp.prepare_image_reference,
}


@pytest.mark.parametrize(
    ("in_wh", "out_wh"), [((1280, 720), (MODEL_W, MODEL_H)), ((1920, 1080), (640, 384))]
)
@pytest.mark.parametrize("impl", list(IMAGE))
def test_prepare_image(
    benchmark, ratios, impl: str, in_wh: tuple[int, int], out_wh: tuple[int, int]
) -> None:
    image = np.random.default_rng(0).integers(0, 256, (in_wh[1], in_wh[0], 3), dtype=np.uint8)
    case = f"{in_wh[0]}x{in_wh[1]} -> {out_wh[0]}x{out_wh[1]}"
    benchmark.group = f"prepare_image {case}"
    benchmark(IMAGE[impl], image, *out_wh)
    record(benchmark, ratios, "prepare_image", case, impl)
