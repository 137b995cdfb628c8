"""What a node may trust of a well-formed message (`fusion.wire.validate`), type by type."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from fusion.errors import CalibrationError, ConfigError, ImageError
from fusion.perception.geometry import CameraModel
from fusion.perception.image import camera_image
from fusion.runtime.testing import forward_camera_calibration
from fusion.wire import validate
from fusion.wire.messages import (
    DETECTION_DTYPE,
    GT_BOX_DTYPE,
    Calibration,
    CameraFrame,
    Detections,
    EgoMotion,
    GroundTruth,
    RadarScan,
    empty_points,
)

NOW = 5_000_000_000_000  # the receiver's monotonic clock in these tests


def jpeg(width: int = 64, height: int = 48) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8))
    assert ok
    return data.reshape(-1)


def with_size(data: np.ndarray, width: int, height: int) -> np.ndarray:
    """`data` (a JPEG) with the size in its frame header rewritten."""
    out = data.copy()
    sof = next(i for i in range(len(out) - 1) if out[i] == 0xFF and out[i + 1] == 0xC0)
    out[sof + 5 : sof + 9] = [height >> 8, height & 255, width >> 8, width & 255]
    return out


def frame(**changes) -> CameraFrame:
    base = {"image": jpeg(), "encoding": "jpeg", "width_px": 64, "height_px": 48}
    base.update(changes)
    return CameraFrame(capture_ns=NOW, **base)


def reason(msg, **kwargs) -> str | None:
    found = validate.problem(msg, NOW, **kwargs)
    return None if found is None else found.reason


def test_valid_messages_pass() -> None:
    calib = forward_camera_calibration(320, 180)
    calib.capture_ns = NOW
    for msg in (
        frame(),
        CameraFrame(image=np.zeros((48, 64, 3), np.uint8), capture_ns=NOW),
        CameraFrame(image=np.zeros((48, 64), np.uint8), encoding="mono8", capture_ns=NOW),
        RadarScan(points=empty_points(10), capture_ns=NOW, scan_period_ns=77_000_000),
        calib,
        Calibration(
            sensor_to_ref=np.eye(4), intrinsics=np.zeros((3, 3)), distortion=np.zeros(0)
        ),  # a radar: no intrinsics, no image; clock monotonic at 0 is 5000 s in the past ...
        EgoMotion(speed_mps=30.0, yaw_rate_rps=0.3, capture_ns=NOW),
        Detections(objects=np.zeros(3, DETECTION_DTYPE), capture_ns=NOW, health={"score": 1.0}),
        GroundTruth(boxes=np.zeros(2, GT_BOX_DTYPE), capture_ns=NOW, clock="sim"),
    ):
        if isinstance(msg, Calibration) and not msg.intrinsics.any():
            msg.capture_ns = NOW  # ... so stamp it now
        assert validate.problem(msg, NOW) is None, msg


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"image": with_size(jpeg(), 60000, 60000), "width_px": 60000, "height_px": 60000}, "px a"),
        ({"image": with_size(jpeg(), 4000, 4500), "width_px": 4000, "height_px": 4500}, "pixels"),
        ({"width_px": 640, "height_px": 480}, "header says 64x48"),
        ({"image": np.frombuffer(b"\xff\xd8not a jpeg at all", np.uint8)}, "not a JPEG"),
        ({"image": jpeg()[:20]}, "not a JPEG"),
        ({"image": np.zeros(0, np.uint8)}, "not a JPEG"),
        ({"image": np.zeros((48, 64, 3), np.uint8), "encoding": "yuv422"}, "encoding"),
        ({"image": np.zeros((48, 64), np.uint8), "encoding": "bgr8"}, "does not fit"),
        (
            {"image": np.zeros((48, 64, 3), np.uint8), "encoding": "bgr8", "height_px": 40},
            "declares 64x40",
        ),
        (
            {
                "image": np.zeros((4, 4, 3), np.uint8),
                "encoding": "rgb8",
                "width_px": 4,
                "height_px": 4,
            },
            "8..8192",
        ),
    ],
    ids=[
        "jpeg 60000x60000",
        "jpeg over 16 Mpx",
        "declared size not the header's",
        "no frame header",
        "truncated header",
        "empty",
        "unknown encoding",
        "2-D bgr8",
        "raw size not the declared one",
        "raw too small",
    ],
)
def test_bad_images_are_rejected_before_any_decode(changes: dict, why: str) -> None:
    bad = frame(**changes)
    found = validate.problem(bad, NOW)
    assert found is not None and found.reason == "bad_image" and why in found.message, found
    with pytest.raises(ImageError):
        camera_image(bad)


def test_a_small_jpeg_declaring_a_huge_size_allocates_nothing() -> None:
    """The size check reads the header only: rejecting a 60000 x 60000 claim costs no memory."""
    bad = frame(image=with_size(jpeg(), 60000, 60000), width_px=60000, height_px=60000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError):
            camera_image(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_jpeg_size_walks_markers() -> None:
    data = jpeg(200, 100)
    assert validate.jpeg_size(data) == (200, 100)
    assert validate.jpeg_size(bytes(data)) == (200, 100)
    padded = np.concatenate([data[:2], [0xFF, 0xFF], data[2:]]).astype(np.uint8)  # fill byte
    assert validate.jpeg_size(padded) == (200, 100)
    for bad in (b"", b"\xff\xd8", b"\x89PNG\r\n", bytes(data[:30]), b"\xff\xd8\xff\xda\x00\x02"):
        assert validate.jpeg_size(bad) is None


@pytest.mark.parametrize(
    "clock, capture_ns, ok",
    [
        ("monotonic", NOW, True),
        ("monotonic", NOW + 900_000_000, True),
        ("monotonic", NOW + 2_000_000_000, False),  # from the future
        ("monotonic", NOW - 59_000_000_000, True),
        ("monotonic", NOW - 61_000_000_000, False),  # a minute old
        ("monotonic", -(2**63), False),
        ("realtime", 1_700_000_000_000_000_000, True),
        ("realtime", 1_700_000_000_000_000_000 + 10**12, False),
        ("sim", 10**17, True),  # not this host's clock: the synchroniser handles jumps
        ("sim", -1, False),
        ("assigned", 0, True),
    ],
)
def test_stamps_within_a_window_of_the_receivers_clock(
    clock: str, capture_ns: int, ok: bool
) -> None:
    msg = EgoMotion(clock=clock, capture_ns=capture_ns)
    got = reason(msg, realtime_ns=1_700_000_000_000_000_000)
    assert got == (None if ok else "bad_stamp")


def test_header_fields_are_bounded() -> None:
    assert reason(EgoMotion(capture_ns=NOW, seq=-1)) == "bad_fields"
    assert reason(EgoMotion(capture_ns=NOW, sensor_id="x" * 65)) == "bad_fields"
    assert reason(EgoMotion(capture_ns=NOW, sensor_id="é" * 33)) == "bad_fields"  # 66 bytes
    trace = {f"hop{i}": i for i in range(33)}
    assert reason(EgoMotion(capture_ns=NOW, trace=trace)) == "bad_fields"
    assert reason(EgoMotion(capture_ns=NOW, trace={"k" * 65: 1})) == "bad_fields"
    assert reason(EgoMotion(capture_ns=NOW, sensor_id="é" * 32)) is None


def camera_calibration(**changes) -> Calibration:
    calib = forward_camera_calibration(320, 180)
    calib.capture_ns = NOW
    for name, value in changes.items():
        setattr(calib, name, value)
    return calib


def k_with(**entries) -> np.ndarray:
    K = camera_calibration().intrinsics.copy()
    for name, value in entries.items():
        K[{"fx": (0, 0), "fy": (1, 1), "w": (2, 2), "k10": (1, 0), "skew": (0, 1)}[name]] = value
    return K


@pytest.mark.parametrize(
    "changes",
    [
        {"intrinsics": np.full((3, 3), np.nan)},
        {"intrinsics": k_with(fx=0.0)},
        {"intrinsics": k_with(fy=-200.0)},
        {"intrinsics": k_with(w=0.0)},  # the raster kernel divides by it
        {"intrinsics": k_with(k10=5.0)},
        {"intrinsics": k_with(skew=1e9)},
        {"intrinsics": k_with(fx=1e12, fy=1e12)},
        {"sensor_to_ref": np.zeros((4, 4))},  # not invertible
        {"sensor_to_ref": np.diag([1.0, 1.0, 1.0, 2.0])},
        {"sensor_to_ref": np.diag([2.0, 1.0, 0.5, 1.0])},  # invertible, not rigid
        {"distortion": np.array([np.inf])},
        {"distortion": np.zeros(20)},
        {"width_px": 0},
        {"width_px": 2**31, "height_px": 2**31},  # the blank radar-only image would be exabytes
        {"height_px": 100_000},
    ],
    ids=lambda c: ", ".join(c),
)
def test_unusable_calibrations_are_rejected(changes: dict) -> None:
    calib = camera_calibration(**changes)
    assert reason(calib) == "bad_calibration"
    with pytest.raises(CalibrationError):
        CameraModel.from_calibration(calib)


def test_far_translation_is_rejected() -> None:
    t = np.eye(4)
    t[0, 3] = 1e300
    assert reason(camera_calibration(sensor_to_ref=t)) == "bad_calibration"


@pytest.mark.parametrize(
    "changes",
    [
        {"speed_mps": float("nan")},
        {"yaw_rate_rps": float("inf")},
        {"x_m": float("-inf")},
        {"speed_mps": 1e6},
        {"yaw_rate_rps": 50.0},
        {"accel_mps2": -1e4},
    ],
    ids=lambda c: ", ".join(c),
)
def test_ego_motion_must_be_finite_and_possible(changes: dict) -> None:
    assert reason(EgoMotion(capture_ns=NOW, **changes)) == "bad_ego_motion"


def test_radar_scans() -> None:
    assert reason(RadarScan(points=empty_points(100_001), capture_ns=NOW)) == (
        "radar_too_many_points"
    )
    assert reason(RadarScan(points=empty_points(3), capture_ns=NOW, scan_period_ns=-1)) == (
        "bad_radar"
    )
    nan = empty_points(3)
    nan["x"] = np.nan  # points are cleaned (and counted) by the consumer, not rejected here
    assert reason(RadarScan(points=nan, capture_ns=NOW)) is None


def test_detections_and_ground_truth() -> None:
    def dets(**fields) -> Detections:
        objects = np.zeros(2, DETECTION_DTYPE)
        for name, value in fields.items():
            objects[name][1] = value
        return Detections(objects=objects, capture_ns=NOW)

    assert reason(dets()) is None
    for fields in ({"score": 1.5}, {"score": np.nan}, {"x": np.inf}, {"class_id": 9}, {"l": -1}):
        assert reason(dets(**fields)) == "bad_detections", fields
    many = Detections(
        objects=np.zeros(0, DETECTION_DTYPE),
        capture_ns=NOW,
        source_seqs={str(i): i for i in range(17)},
    )
    assert reason(many) == "bad_detections"
    nan_health = Detections(
        objects=np.zeros(0, DETECTION_DTYPE), capture_ns=NOW, health={"score": float("nan")}
    )
    assert reason(nan_health) == "bad_detections"
    boxes = np.zeros(1, GT_BOX_DTYPE)
    boxes["yaw"] = np.nan
    assert reason(GroundTruth(boxes=boxes, capture_ns=NOW)) == "bad_ground_truth"


def test_astyx_jpeg_size_uses_the_same_parser() -> None:
    from fusion.datasets import astyx

    assert astyx.jpeg_size(bytes(jpeg(30, 20))) == (30, 20)
    with pytest.raises(ConfigError):
        astyx.jpeg_size(b"\xff\xd8\xff\xda")
