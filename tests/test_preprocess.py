"""The Numba kernels of `fusion.perception.preprocess` against their numpy references, on random and
real (Astyx) inputs and on the edge cases: no points, points behind the camera, NaN/inf, points off
the image, 100k points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba.core.caching import NullCache

from fusion.perception import _kernels
from fusion.perception import preprocess as pp
from fusion.perception.geometry import CameraModel, invert_transform
from fusion.wire.messages import RADAR_POINT_DTYPE, Calibration

# Reference frame (x forward, y left, z up) -> OpenCV camera (x right, y down, z forward).
REF_TO_CAM = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.3], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
GRID_H, GRID_W, STRIDE = 64, 112, 4
K = np.array([[400.0, 0.0, 224.0], [0.0, 400.0, 128.0], [0.0, 0.0, 1.0]])


def random_points(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = np.zeros(n, RADAR_POINT_DTYPE)
    points["x"] = rng.uniform(-5.0, 100.0, n)
    points["y"] = rng.uniform(-40.0, 40.0, n)
    points["z"] = rng.uniform(-2.0, 3.0, n)
    points["v_r"] = rng.normal(0.0, 8.0, n)
    points["rcs"] = rng.uniform(-10.0, 40.0, n)
    return points


@pytest.mark.parametrize("seed", range(4))
def test_bev_raster_matches_reference(seed: int) -> None:
    points = random_points(20_000, seed)
    points["x"][::50] = np.nan
    kw = {"x_range_m": (0.0, 100.0), "y_range_m": (-40.0, 40.0), "cell_m": 0.5}
    fast = pp.radar_bev_raster(points, **kw, ground_plane=(-0.8, 0.045))
    slow = pp.radar_bev_raster_reference(points, **kw, ground_plane=(-0.8, 0.045))
    assert fast.shape == (len(pp.BEV_RASTER_CHANNELS), 200, 160)
    np.testing.assert_array_equal(fast, slow)
    assert fast[0].sum() > 0


def test_bev_raster_keeps_nothing_from_the_previous_scan() -> None:
    """The kernel's scratch (per-cell counts, accumulators) lives between calls: a scan after a
    dense one, and the same scan twice, come out exactly as the reference makes them."""
    dense, sparse = random_points(50_000, 7), random_points(300, 8)
    for points in (dense, sparse, sparse, random_points(0, 9), dense):
        np.testing.assert_array_equal(
            pp.radar_bev_raster(points), pp.radar_bev_raster_reference(points)
        )


def test_bev_raster_cell_values_by_hand() -> None:
    points = np.zeros(3, RADAR_POINT_DTYPE)
    points[0] = (99.9, 39.9, 1.0, 2.0, 60.0, 0.0)  # far-left corner: row 0, col 0
    points[1] = (99.8, 39.8, 3.0, -4.0, 30.0, 0.0)  # same cell
    points[2] = (0.1, -39.9, 0.0, 0.0, 5.0, 0.0)  # near-right corner
    kw = {"ground_plane": (0.5, 0.01), "rcs_norm": (40.0, 10.0), "v_r_scale_mps": 2.0}
    kw |= {"x_range_m": (0.0, 100.0), "y_range_m": (-40.0, 40.0), "cell_m": 0.5}
    raster = pp.radar_bev_raster(points, **kw)
    np.testing.assert_array_equal(raster, pp.radar_bev_raster_reference(points, **kw))
    ground = 0.5 + 0.01 * np.array([99.9, 99.8])
    heights = np.array([1.0, 3.0]) - ground
    expected = [
        1.0,  # occupancy
        np.log1p(2),  # log count
        (2.0 - 1.0) / 2,  # mean rcs: (60 - 40) / 10 and (30 - 40) / 10
        2.0,  # max rcs
        heights.mean(),
        heights.min(),
        heights.max(),
        (1.0 - 2.0) / 2,  # mean v_r / 2
        2.0,  # max |v_r| / 2
    ]
    np.testing.assert_allclose(raster[:, 0, 0], expected, rtol=1e-6)
    assert raster.shape == (len(pp.BEV_RASTER_CHANNELS), 200, 160)
    assert raster[0, 199, 159] == 1.0 and raster[0].sum() == 2


def test_bev_raster_skips_non_finite_points() -> None:
    points = random_points(2000, 4)
    bad = np.zeros(len(points), dtype=bool)
    bad[::7] = True
    fields = ("x", "y", "z", "v_r", "rcs")
    for k, i in enumerate(np.flatnonzero(bad)):
        points[fields[k % 5]][i] = (np.nan, np.inf, -np.inf)[k % 3]
    assert np.array_equal(pp.invalid_point_mask(points), bad)
    np.testing.assert_array_equal(pp.radar_bev_raster(points), pp.radar_bev_raster(points[~bad]))


@pytest.mark.slow
def test_bev_raster_100k_points() -> None:
    points = random_points(100_000, 5)
    np.testing.assert_array_equal(
        pp.radar_bev_raster(points), pp.radar_bev_raster_reference(points)
    )


def test_bev_raster_edge_cases() -> None:
    assert not pp.radar_bev_raster(np.zeros(0, RADAR_POINT_DTYPE)).any()
    outside = random_points(100, 0)
    outside["x"] = -1.0
    assert not pp.radar_bev_raster(outside).any()
    assert not pp.radar_bev_raster_reference(outside).any()
    with pytest.raises(ValueError, match="increasing"):
        pp.radar_bev_raster(outside, x_range_m=(10.0, 0.0))
    with pytest.raises(ValueError, match="RADAR_POINT_DTYPE"):
        pp.radar_bev_raster(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="scale"):
        pp.radar_bev_raster(outside, v_r_scale_mps=0.0)
    assert pp.bev_grid_shape((0.0, 50.0), (-20.0, 20.0), 0.25) == (200, 160)


def test_project_points_matches_reference_and_geometry() -> None:
    points = random_points(3000, 7)
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1)
    xyz[::11] = np.nan
    uv, depth = pp.project_points(xyz, REF_TO_CAM, K)
    uv_ref, depth_ref = pp.project_points_reference(xyz, REF_TO_CAM, K)
    np.testing.assert_array_equal(uv, uv_ref)
    np.testing.assert_array_equal(depth, depth_ref)
    calib = Calibration(
        sensor_id="cam",
        sensor_to_ref=invert_transform(REF_TO_CAM),
        intrinsics=K,
        distortion=np.zeros(5),
        width_px=448,
        height_px=256,
    )
    uv_geo, depth_geo = CameraModel.from_calibration(calib).project(xyz)
    np.testing.assert_allclose(depth, depth_geo, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(uv, uv_geo, rtol=1e-9, atol=1e-6)
    assert np.isnan(uv[depth <= pp.MIN_DEPTH_M]).all()


IMAGE_TOLERANCE_OPENCV = 1.0 / min(pp.IMAGE_STD) + 1e-5


@pytest.mark.parametrize(
    ("in_hw", "out_wh"), [((720, 1280), (448, 256)), ((618, 2048), (512, 160)), ((9, 7), (20, 30))]
)
def test_prepare_image_matches_reference_and_opencv(
    in_hw: tuple[int, int], out_wh: tuple[int, int]
) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*in_hw, 3), dtype=np.uint8)
    reference = pp.prepare_image_reference(image, *out_wh)
    assert reference.shape == (3, out_wh[1], out_wh[0]) and reference.dtype == np.float32
    np.testing.assert_allclose(pp.prepare_image_numba(image, *out_wh), reference, atol=1e-5)
    np.testing.assert_allclose(
        pp.prepare_image_opencv(image, *out_wh), reference, atol=IMAGE_TOLERANCE_OPENCV
    )
    default = pp.prepare_image(image, *out_wh)
    np.testing.assert_array_equal(default, pp.prepare_image(image, *out_wh, pp.IMAGE_BACKEND))


def test_prepare_image_normalises_rgb_with_the_documented_constants() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[..., 0] = 10  # B
    image[..., 1] = 128  # G
    image[..., 2] = 250  # R
    for backend in ("numba", "opencv"):
        out = pp.prepare_image(image, 30, 20, backend=backend)
        for c, value in enumerate((250, 128, 10)):
            expected = (value - pp.IMAGE_MEAN[c]) / pp.IMAGE_STD[c]
            np.testing.assert_allclose(out[c], expected, atol=1e-5)


def test_prepare_image_rejects_wrong_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        pp.prepare_image(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(ValueError, match="positive"):
        pp.prepare_image(np.zeros((4, 4, 3), np.uint8), 0, 2)
    with pytest.raises(ValueError, match="backend"):
        pp.prepare_image(np.zeros((4, 4, 3), np.uint8), 2, 2, backend="torch")


def test_kernels_are_cached_and_load_without_compiling_in_a_fresh_process() -> None:
    kernels = [_kernels.bev_raster, _kernels.project_points]
    kernels.append(_kernels.prepare_image)
    assert all(not isinstance(k._cache, NullCache) for k in kernels)
    pp.warm_up()  # makes sure the cache exists
    script = (
        "from fusion.perception import preprocess, _kernels as k\n"
        "preprocess.warm_up()\n"
        "ks = [k.bev_raster, k.project_points, k.prepare_image]\n"
        "print(sum(len(x.stats.cache_misses) for x in ks))\n"
        "print(min(len(x.stats.cache_hits) for x in ks))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    misses, hits = (int(v) for v in result.stdout.split())
    assert misses == 0 and hits >= 1, result.stdout + result.stderr


def load_astyx_frame(root: Path, frame: int) -> tuple[np.ndarray, CameraModel]:
    rows = np.loadtxt(root / "radar_6455" / f"{frame:06d}.txt", skiprows=2, ndmin=2)
    points = np.zeros(len(rows), RADAR_POINT_DTYPE)
    for k, name in enumerate(("x", "y", "z", "v_r", "rcs")):
        points[name] = rows[:, k]
    sensors = json.loads((root / "calibration" / f"{frame:06d}.json").read_text())["sensors"]
    camera = next(s for s in sensors if s["sensor_uid"] == "camera_front")["calib_data"]
    calib = Calibration(
        sensor_id="camera_front",
        sensor_to_ref=np.array(camera["T_to_ref_COS"]),
        intrinsics=np.array(camera["K"]),
        distortion=np.zeros(5),
        width_px=2048,
        height_px=618,
    )
    return points, CameraModel.from_calibration(calib)


@pytest.mark.realdata
@pytest.mark.parametrize("frame", [0, 57, 130, 222, 345, 445])
def test_bev_raster_matches_reference_on_astyx(astyx_root: Path, frame: int) -> None:
    points, camera = load_astyx_frame(astyx_root, frame)
    model_camera = camera.scaled(512, 160)
    uv, _ = pp.project_points(
        np.stack([points["x"], points["y"], points["z"]], axis=1),
        model_camera.ref_to_cam,
        model_camera.K,
    )
    assert model_camera.in_image(uv).sum() > 0.3 * len(points)
    raster = pp.radar_bev_raster(points, ground_plane=(-0.79, 0.045))
    np.testing.assert_array_equal(
        raster, pp.radar_bev_raster_reference(points, ground_plane=(-0.79, 0.045))
    )
    assert raster[0].sum() > 50


def test_warm_up_covers_read_only_points_from_the_wire() -> None:
    """Arrays decoded from a message are read-only, and numba compiles those separately."""
    from fusion.wire import codec
    from fusion.wire.messages import RadarScan

    pp.warm_up()
    points = np.zeros(50, RADAR_POINT_DTYPE)
    points["x"] = np.linspace(5, 40, 50)
    _, scan = codec.decode(codec.encode("radar", RadarScan(points=points)))
    assert not scan.points.flags.writeable
    before = len(_kernels.bev_raster.signatures)
    pp.radar_bev_raster(scan.points)
    assert len(_kernels.bev_raster.signatures) == before, "a new compile on the hot path"
