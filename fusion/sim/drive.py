"""`simulate`: a seeded drive as a time-ordered stream of (topic, message).

The camera runs at its nominal rate from t = 0; the radar runs on its own clock (a random phase
and a little jitter per scan), so the two are never aligned. Ego motion and ground truth come
with each camera frame, at its capture time; calibrations come first and then once per second.
One `numpy.random.SeedSequence` per seed feeds independent generators for the world, the
camera and the radar, so the same seed gives byte-identical messages whatever is consumed, and
on any x86-64 CPU: what is written is computed without numpy's CPU-specific vectorised
transcendental functions and BLAS products (`fusion.sim._exact`), and the ego motion's floats,
written at full precision, are also rounded to `EGO_DECIMALS` decimal places.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator

import cv2
import numpy as np

from fusion.errors import ConfigError
from fusion.perception.geometry import CameraModel
from fusion.sim import _exact as ex
from fusion.sim.camera import Renderer, camera_calibrations, world_to_ref
from fusion.sim.radar import RadarModel
from fusion.sim.scenarios import SCENARIOS
from fusion.sim.world import RADAR_HEIGHT_M, World
from fusion.wire.messages import (
    GT_BOX_DTYPE,
    CameraFrame,
    EgoMotion,
    GroundTruth,
    Message,
    RadarScan,
)

CLOCK = "sim"
CALIBRATION_PERIOD_NS = 1_000_000_000
#: Radar scan-time jitter, as a fraction of its period (standard deviation).
RADAR_JITTER = 0.03
#: Ego motion values are written rounded to this many decimal places (nm, nrad, nm/s ...), so
#: the last bits of a C library's sin or atan2 (which may differ between its builds for CPUs
#: with and without FMA) cannot reach the file.
EGO_DECIMALS = 9

# Order of messages that share a capture time.
_CALIBRATION, _CAMERA, _RADAR = 0, 1, 2
_TOPICS = frozenset({"calibration", "camera", "radar", "ego_motion", "ground_truth"})


def _check(scenario, duration_s, camera_rate_hz, radar_rate_hz, width_px, height_px, jpeg_quality):
    if scenario not in SCENARIOS:
        raise ConfigError(
            f"unknown scenario {scenario!r}; choose one of {', '.join(sorted(SCENARIOS))}"
        )
    if not duration_s > 0:
        raise ConfigError(f"duration must be positive, got {duration_s} s")
    if not (camera_rate_hz > 0 and radar_rate_hz > 0):
        raise ConfigError(
            f"sensor rates must be positive, got camera {camera_rate_hz} Hz, "
            f"radar {radar_rate_hz} Hz"
        )
    if width_px < 64 or height_px < 48:
        raise ConfigError(f"image size {width_px}x{height_px} is too small; use at least 64x48")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"JPEG quality must be 1-100 (or None for raw BGR), got {jpeg_quality}")


def simulate(
    scenario: str = "city",
    seed: int = 0,
    duration_s: float = 10.0,
    camera_rate_hz: float = 20.0,
    radar_rate_hz: float = 13.0,
    width_px: int = 1280,
    height_px: int = 720,
    jpeg_quality: int | None = 90,
    topics: Collection[str] | None = None,
    start_s: float = 0.0,
) -> Iterator[tuple[str, Message]]:
    """Yield a drive's messages as ``(topic, message)`` in non-decreasing ``capture_ns``.

    Topics: ``calibration`` (camera ``camera_front`` and ``radar``, at 0 and every second),
    ``camera``, ``ego_motion`` and ``ground_truth`` (one each per camera frame) and ``radar``.
    `topics` limits what is yielded; without ``camera`` and ``ground_truth`` no frame is
    rendered (a radar-only producer pays nothing for the camera), and every message yielded is
    the same as in the full drive. `start_s` starts the drive that far in (a producer restarted
    mid-drive): nothing before it is rendered, the calibrations last published before it come
    first, and everything from it on is the same as in the full drive. Raises `ConfigError` at
    once for an unknown scenario or a nonsensical parameter; the drive itself is generated
    lazily, one message at a time.
    """
    _check(scenario, duration_s, camera_rate_hz, radar_rate_hz, width_px, height_px, jpeg_quality)
    if start_s < 0:
        raise ConfigError(f"start must not be negative, got {start_s} s")
    wanted = frozenset(topics) if topics is not None else frozenset(_TOPICS)
    unknown = wanted - _TOPICS
    if unknown:
        raise ConfigError(f"simulate() has no topics {sorted(unknown)}; it makes {sorted(_TOPICS)}")
    return _drive(
        scenario,
        seed,
        duration_s,
        camera_rate_hz,
        radar_rate_hz,
        width_px,
        height_px,
        jpeg_quality,
        wanted,
        round(start_s * 1e9),
    )


def _drive(
    scenario: str,
    seed: int,
    duration_s: float,
    camera_rate_hz: float,
    radar_rate_hz: float,
    width_px: int,
    height_px: int,
    jpeg_quality: int | None,
    wanted: frozenset[str],
    start_ns: int,
) -> Iterator[tuple[str, Message]]:
    config = SCENARIOS[scenario]
    world_ss, camera_ss, radar_ss, clock_ss = np.random.SeedSequence(seed).spawn(4)
    world = World(config, duration_s, np.random.default_rng(world_ss))
    cam_calib, radar_calib = camera_calibrations(width_px, height_px)
    renderer = Renderer(
        world, CameraModel.from_calibration(cam_calib), np.random.default_rng(camera_ss)
    )
    radar = RadarModel(world, np.random.default_rng(radar_ss))

    duration_ns = round(duration_s * 1e9)
    events: list[tuple[int, int, int]] = []
    events += [
        (t, _CALIBRATION, k) for k, t in enumerate(range(0, duration_ns, CALIBRATION_PERIOD_NS))
    ]
    n_frames = int(np.ceil(duration_s * camera_rate_hz - 1e-9))
    events += [(round(k * 1e9 / camera_rate_hz), _CAMERA, k) for k in range(n_frames)]
    clock_rng = np.random.default_rng(clock_ss)
    radar_period_s = 1.0 / radar_rate_hz
    phase_s = clock_rng.uniform(0.2, 0.8) * radar_period_s
    n_scans = int(np.ceil((duration_s - phase_s) * radar_rate_hz - 1e-9))
    jitter = np.clip(clock_rng.normal(0.0, RADAR_JITTER, max(n_scans, 0)), -0.15, 0.15)
    scan_ns = np.round((phase_s + (np.arange(max(n_scans, 0)) + jitter) * radar_period_s) * 1e9)
    events += [(int(t), _RADAR, k) for k, t in enumerate(scan_ns) if t < duration_ns]
    events.sort()

    view_m = config.draw_distance_m + 10.0
    last_calibration = None  # the stamp of the latest calibration before start_s
    for capture_ns, kind, k in events:
        t = capture_ns * 1e-9
        stamp = {"seq": k, "capture_ns": capture_ns, "clock": CLOCK}
        past = capture_ns < start_ns
        if not past and last_calibration is not None:
            if "calibration" in wanted:  # a late starter needs the rig's calibration at once
                for calib in (cam_calib, radar_calib):
                    yield "calibration", calib.replace(**last_calibration)
            last_calibration = None
        if kind == _CALIBRATION:
            if past:
                last_calibration = stamp
            elif "calibration" in wanted:
                for calib in (cam_calib, radar_calib):
                    yield "calibration", calib.replace(**stamp)
            continue
        if past and kind == _CAMERA:
            if wanted & {"camera", "ground_truth"}:
                renderer.skip()  # its random draws, so the frames after it stay the same
            continue
        ego = world.ego_at(t)
        state = world.actors_at(t)
        dist = ex.hypot(state.x - ego.x, state.y - ego.y)
        if kind == _RADAR:
            if "radar" not in wanted:
                continue
            points = radar.scan(t, ego, state, np.flatnonzero(dist < radar.max_range_m + 15.0))
            if past:  # scanned all the same: its random draws keep the later scans the same
                continue
            period_ns = round(radar_period_s * 1e9)
            yield (
                "radar",
                RadarScan(**stamp, sensor_id="radar", points=points, scan_period_ns=period_ns),
            )
            continue
        rendered = None
        if wanted & {"camera", "ground_truth"}:
            near = np.flatnonzero(dist < view_m)
            rendered = renderer.render(t, ego, state, near)
        if "camera" in wanted:
            yield "camera", _frame(rendered[0], jpeg_quality, config.exposure_us, stamp)
        if "ego_motion" in wanted:
            yield (
                "ego_motion",
                EgoMotion(
                    **stamp,
                    sensor_id="ego",
                    x_m=round(ego.x, EGO_DECIMALS),
                    y_m=round(ego.y, EGO_DECIMALS),
                    yaw_rad=round(ego.yaw, EGO_DECIMALS),
                    speed_mps=round(ego.speed, EGO_DECIMALS),
                    yaw_rate_rps=round(ego.yaw_rate, EGO_DECIMALS),
                    accel_mps2=round(ego.accel, EGO_DECIMALS),
                ),
            )
        if "ground_truth" in wanted:
            seen = dist[near] < config.draw_distance_m
            boxes = _boxes(world, ego, state, near[seen], rendered[1][seen])
            yield "ground_truth", GroundTruth(**stamp, sensor_id="sim", boxes=boxes)


def _frame(image: np.ndarray, jpeg_quality: int | None, exposure_us: int, stamp) -> CameraFrame:
    if jpeg_quality is None:
        return CameraFrame(
            **stamp, sensor_id="camera_front", image=image, encoding="bgr8", exposure_us=exposure_us
        )
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    assert ok, "OpenCV failed to encode a JPEG"
    height_px, width_px = image.shape[:2]
    return CameraFrame(
        **stamp,
        sensor_id="camera_front",
        image=jpeg.reshape(-1),
        encoding="jpeg",
        width_px=width_px,
        height_px=height_px,
        exposure_us=exposure_us,
    )


def _boxes(world: World, ego, state, idx: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
    boxes = np.zeros(len(idx), dtype=GT_BOX_DTYPE)
    x, y = world_to_ref(ego, state.x[idx], state.y[idx])
    size = world.actors.size[idx]
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    vx, vy = state.vx[idx], state.vy[idx]
    boxes["class_id"] = world.actors.class_id[idx]
    boxes["track_id"] = idx
    boxes["x"], boxes["y"] = x, y
    boxes["z"] = size[:, 2] / 2 - RADAR_HEIGHT_M
    boxes["l"], boxes["w"], boxes["h"] = size[:, 0], size[:, 1], size[:, 2]
    boxes["yaw"] = (state.yaw[idx] - ego.yaw + np.pi) % (2 * np.pi) - np.pi
    boxes["vx"], boxes["vy"] = c * vx + s * vy, -s * vx + c * vy
    boxes["occlusion"] = occlusion
    return boxes
