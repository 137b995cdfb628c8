"""What a node may trust of a message that decoded: the checks of meaning beside the codec.

The codec (`fusion.wire.codec`) guarantees form: fields of the right types, arrays of the right
dtypes and shapes, nothing larger than the frame that carried it. A well-formed message can
still be hostile or broken in what it says: a JPEG of 8 bytes declaring 60000 x 60000 pixels, a
calibration that divides by zero, a stamp a year ahead that makes every later frame look late,
a trace of a thousand entries that an output copies past the header limit. `problem` checks, per
message type, what a consumer may rely on afterwards, without decoding or allocating anything
the message declares:

- every message: ``seq`` >= 0; ``sensor_id`` and trace keys of bounded length; at most
  `Limits.max_trace_entries` trace entries; a ``monotonic`` or ``realtime`` ``capture_ns`` within
  a window of the receiver's clock (`Limits.max_future_ns` ahead, `Limits.max_past_ns`
  behind), a ``sim`` or ``assigned`` one not negative;
- `CameraFrame`: the declared size against the array (raw encodings) or against the JPEG's own
  header (read without decoding), each side within `Limits.min_image_side_px` ..
  `Limits.max_image_side_px` and at most `Limits.max_image_pixels` pixels;
- `RadarScan`: at most `Limits.max_radar_points` points, a scan period within 0 .. 10 s (the
  points' own values are cleaned, counted, by the consumer: a scan with some bad points is still
  a scan);
- `Calibration`: finite values, a rigid ``sensor_to_ref`` with a translation within
  `Limits.max_translation_m`, and for a camera (non-zero intrinsics) an invertible pinhole
  ``K`` (positive focal lengths, last row 0 0 1), an image size as for frames and at most 14
  distortion coefficients;
- `EgoMotion`: finite values, speed and yaw rate a vehicle can have;
- `Detections` and `GroundTruth`: finite boxes, class ids in `CLASS_NAMES`, sizes >= 0, scores in
  [0, 1], bounded maps.

A failed check is a `Rejection`: a one-word ``reason`` a node counts by (``bad_stamp``,
``bad_fields``, ``bad_image``, ``bad_calibration``, ``radar_too_many_points``, ``bad_radar``,
``bad_ego_motion``, ``bad_detections``, ``bad_ground_truth``) and a message saying what was wrong.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from fusion.wire.messages import (
    CLASS_NAMES,
    Calibration,
    CameraFrame,
    Detections,
    EgoMotion,
    GroundTruth,
    Message,
    RadarScan,
)


@dataclass(frozen=True)
class Limits:
    """What a node accepts. The defaults are generous for real sensors and drives."""

    #: A stamp on the receiver's clock may be this far ahead of it (clocks of one host agree;
    #: across hosts a disciplined clock is within milliseconds).
    max_future_ns: int = 1_000_000_000
    #: ... and this far behind (queues, a lock-step replay of a slow model, a stalled producer).
    max_past_ns: int = 60_000_000_000
    max_id_bytes: int = 64
    max_trace_entries: int = 32
    max_trace_key_bytes: int = 64
    min_image_side_px: int = 8
    max_image_side_px: int = 8192
    #: 4096 x 4096: a decoded BGR image is then at most 48 MiB.
    max_image_pixels: int = 4096 * 4096
    max_radar_points: int = 100_000
    max_scan_period_ns: int = 10_000_000_000
    max_translation_m: float = 1000.0
    max_focal_px: float = 1e6
    max_distortion_coefficients: int = 14
    max_speed_mps: float = 150.0
    max_yaw_rate_rps: float = 10.0
    max_accel_mps2: float = 100.0
    max_map_entries: int = 16


LIMITS = Limits()


@dataclass(frozen=True)
class Rejection:
    """Why a message cannot be trusted: `reason` to count by, `message` to log."""

    reason: str
    message: str


def problem(
    msg: Message,
    now_ns: int | None = None,
    *,
    realtime_ns: int | None = None,
    check_stamps: bool = True,
    limits: Limits = LIMITS,
) -> Rejection | None:
    """The first thing `msg` says that cannot be trusted, or None. `now_ns` is the receiver's
    monotonic clock (default `time.monotonic_ns()`), `realtime_ns` its real-time clock (default
    `time.time_ns()`); stamps on those clocks are checked against them unless `check_stamps` is
    False (a consumer that does not order by time, such as a viewer)."""
    name = f"{type(msg).__name__} {msg.seq}"
    why = _header_problem(msg, limits)
    if why is not None:
        return Rejection("bad_fields", f"{name}: {why}")
    why = _stamp_problem(msg, now_ns, realtime_ns, limits) if check_stamps else None
    if why is not None:
        return Rejection("bad_stamp", f"{name}: {why}")
    if isinstance(msg, CameraFrame):
        why = image_problem(msg, limits)
        return None if why is None else Rejection("bad_image", f"{name}: {why}")
    if isinstance(msg, RadarScan):
        return _radar_problem(msg, name, limits)
    if isinstance(msg, Calibration):
        why = calibration_problem(msg, limits)
        return None if why is None else Rejection("bad_calibration", f"{name}: {why}")
    if isinstance(msg, EgoMotion):
        why = _ego_problem(msg, limits)
        return None if why is None else Rejection("bad_ego_motion", f"{name}: {why}")
    if isinstance(msg, Detections):
        why = _detections_problem(msg, limits)
        return None if why is None else Rejection("bad_detections", f"{name}: {why}")
    if isinstance(msg, GroundTruth):
        why = _boxes_problem(msg.boxes, "boxes")
        return None if why is None else Rejection("bad_ground_truth", f"{name}: {why}")
    return None


# -- every message ---------------------------------------------------------------------------


def _header_problem(msg: Message, limits: Limits) -> str | None:
    if msg.seq < 0:
        return f"seq {msg.seq} is negative"
    if len(msg.sensor_id.encode()) > limits.max_id_bytes:
        return f"sensor_id is over {limits.max_id_bytes} bytes"
    if len(msg.trace) > limits.max_trace_entries:
        return f"trace has {len(msg.trace)} entries, limit {limits.max_trace_entries}"
    if any(len(key.encode()) > limits.max_trace_key_bytes for key in msg.trace):
        return f"a trace key is over {limits.max_trace_key_bytes} bytes"
    return None


def _stamp_problem(
    msg: Message, now_ns: int | None, realtime_ns: int | None, limits: Limits
) -> str | None:
    if msg.clock == "monotonic":
        ref_ns = time.monotonic_ns() if now_ns is None else now_ns
    elif msg.clock == "realtime":
        ref_ns = time.time_ns() if realtime_ns is None else realtime_ns
    else:  # sim or assigned: not the receiver's clock; the synchroniser handles jumps
        return None if msg.capture_ns >= 0 else f"{msg.clock} capture_ns is negative"
    ahead_ns = msg.capture_ns - ref_ns
    if ahead_ns > limits.max_future_ns or -ahead_ns > limits.max_past_ns:
        return (
            f"capture_ns is {ahead_ns / 1e9:+.3f} s from this host's {msg.clock} clock, outside "
            f"{-limits.max_past_ns / 1e9:g} .. +{limits.max_future_ns / 1e9:g} s"
        )
    return None


# -- camera frames ---------------------------------------------------------------------------


def image_problem(frame: CameraFrame, limits: Limits = LIMITS) -> str | None:
    """Why `frame`'s image cannot be decoded safely or does not match its declared size, or
    None. Reads a JPEG's header only; allocates nothing the frame declares."""
    why = frame.wire_problem()  # an unknown encoding, a shape that does not fit it
    if why is not None:
        return why
    image = frame.image
    if frame.encoding == "jpeg":
        size = jpeg_size(image)
        if size is None:
            return "image is not a JPEG (no frame header before the scan)"
        if size != (frame.width_px, frame.height_px):
            return (
                f"JPEG header says {size[0]}x{size[1]}, the frame declares "
                f"{frame.width_px}x{frame.height_px}"
            )
        width, height = size
    else:
        height, width = int(image.shape[0]), int(image.shape[1])
        if (width, height) != (frame.width_px, frame.height_px):
            return (
                f"{frame.encoding} image is {width}x{height}, the frame declares "
                f"{frame.width_px}x{frame.height_px}"
            )
    return _size_problem(width, height, limits)


def _size_problem(width: int, height: int, limits: Limits) -> str | None:
    lo, hi = limits.min_image_side_px, limits.max_image_side_px
    if not (lo <= width <= hi and lo <= height <= hi):
        return f"image size {width}x{height} is outside {lo}..{hi} px a side"
    if width * height > limits.max_image_pixels:
        return f"image size {width}x{height} is over {limits.max_image_pixels} pixels"
    return None


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman or
#: arithmetic), whose segment holds the image size.
_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)}
    | {
        0xCD,
        0xCE,
        0xCF,
    }
)
#: Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
_SOS = 0xDA


def jpeg_size(data: np.ndarray | bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None when `data` is not a JPEG whose
    frame header comes before its first scan. Walks the marker segments; never decodes."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data, dtype=np.uint8)
    buf = memoryview(data).cast("B")
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    pos = 2
    while pos + 4 <= n:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        pos += 2
        if marker in _STANDALONE:
            continue
        length = buf[pos] << 8 | buf[pos + 1]
        if length < 2 or pos + length > n:
            return None
        if marker in _SOF_MARKERS:
            if length < 7:
                return None
            height = buf[pos + 3] << 8 | buf[pos + 4]
            width = buf[pos + 5] << 8 | buf[pos + 6]
            return width, height
        if marker == _SOS:
            return None
        pos += length
    return None


# -- radar -------------------------------------------------------------------------------------


def _radar_problem(scan: RadarScan, name: str, limits: Limits) -> Rejection | None:
    if len(scan.points) > limits.max_radar_points:
        return Rejection(
            "radar_too_many_points",
            f"{name} has {len(scan.points)} points, limit {limits.max_radar_points}",
        )
    if not 0 <= scan.scan_period_ns <= limits.max_scan_period_ns:
        return Rejection(
            "bad_radar", f"{name}: scan_period_ns {scan.scan_period_ns} is outside 0 .. 10 s"
        )
    return None


# -- calibration -------------------------------------------------------------------------------


def rigid_transform_problem(
    transform: np.ndarray, what: str = "transform", max_translation_m: float = math.inf
) -> str | None:
    """Why `transform` is not a finite 4x4 rigid transform (rotation and translation, last row
    0 0 0 1), or None."""
    t = np.asarray(transform, dtype=np.float64)
    if t.shape != (4, 4):
        return f"{what} must be 4x4, got shape {t.shape}"
    if not np.all(np.isfinite(t)):
        return f"{what} has NaN or inf entries"
    if not np.allclose(t[3], [0, 0, 0, 1], atol=1e-6):
        return f"{what} last row must be [0, 0, 0, 1], got {t[3].tolist()}"
    rotation = t[:3, :3]
    det = float(np.linalg.det(rotation))
    if abs(det - 1.0) > 1e-3 or not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3):
        return f"{what} rotation is not orthonormal (det {det:.4f}); check the calibration file"
    if np.abs(t[:3, 3]).max() > max_translation_m:
        return f"{what} translation {t[:3, 3].tolist()} is over {max_translation_m:g} m"
    return None


def intrinsics_problem(K: np.ndarray, max_focal_px: float = LIMITS.max_focal_px) -> str | None:
    """Why `K` is not a finite, invertible pinhole matrix (fx, fy > 0; 0 below the diagonal;
    last row 0 0 1), or None."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        return f"intrinsics must be a finite 3x3, got {K.tolist()}"
    fx, fy = K[0, 0], K[1, 1]
    if not (0 < fx <= max_focal_px and 0 < fy <= max_focal_px):
        return f"intrinsics focal lengths ({fx:g}, {fy:g}) must be in (0, {max_focal_px:g}] px"
    if abs(K[1, 0]) > 1e-6 * fy or not np.allclose(K[2], [0, 0, 1], rtol=0, atol=1e-9):
        return f"intrinsics must be a pinhole matrix [fx s cx; 0 fy cy; 0 0 1], got {K.tolist()}"
    if abs(K[0, 1]) > fx:
        return f"intrinsics skew {K[0, 1]:g} is larger than the focal length"
    return None


def calibration_problem(calib: Calibration, limits: Limits = LIMITS) -> str | None:
    """Why `calib` cannot be used, or None; see the module docstring."""
    why = rigid_transform_problem(
        calib.sensor_to_ref, f"{calib.sensor_id!r:.80} sensor_to_ref", limits.max_translation_m
    )
    if why is not None:
        return why
    if not np.all(np.isfinite(calib.intrinsics)) or not np.all(np.isfinite(calib.distortion)):
        return "intrinsics or distortion have NaN or inf entries"
    if not np.any(calib.intrinsics):  # not a camera: no image
        if calib.width_px or calib.height_px:
            return "a sensor without intrinsics must have image size 0x0"
        return None
    why = intrinsics_problem(calib.intrinsics, limits.max_focal_px)
    if why is not None:
        return why
    if len(calib.distortion) > limits.max_distortion_coefficients:
        return f"{len(calib.distortion)} distortion coefficients, OpenCV takes at most 14"
    return _size_problem(calib.width_px, calib.height_px, limits)


# -- ego motion, detections, ground truth -------------------------------------------------------


def _ego_problem(ego: EgoMotion, limits: Limits) -> str | None:
    values = (ego.x_m, ego.y_m, ego.yaw_rad, ego.speed_mps, ego.yaw_rate_rps, ego.accel_mps2)
    if not all(math.isfinite(v) for v in values):
        return "a value is NaN or infinite"
    if abs(ego.speed_mps) > limits.max_speed_mps:
        return f"speed {ego.speed_mps:g} m/s is over {limits.max_speed_mps:g}"
    if abs(ego.yaw_rate_rps) > limits.max_yaw_rate_rps:
        return f"yaw rate {ego.yaw_rate_rps:g} rad/s is over {limits.max_yaw_rate_rps:g}"
    if abs(ego.accel_mps2) > limits.max_accel_mps2:
        return f"acceleration {ego.accel_mps2:g} m/s^2 is over {limits.max_accel_mps2:g}"
    return None


_BOX_FLOATS = ("x", "y", "z", "l", "w", "h", "yaw", "vx", "vy")


def _boxes_problem(boxes: np.ndarray, what: str) -> str | None:
    for field in _BOX_FLOATS:
        if not np.all(np.isfinite(boxes[field])):
            return f"{what} {field} has NaN or inf values"
    if np.any((boxes["class_id"] < 0) | (boxes["class_id"] >= len(CLASS_NAMES))):
        return f"{what} class_id outside 0..{len(CLASS_NAMES) - 1}"
    if np.any((boxes["l"] < 0) | (boxes["w"] < 0) | (boxes["h"] < 0)):
        return f"{what} has negative sizes"
    return None


def _detections_problem(det: Detections, limits: Limits) -> str | None:
    why = _boxes_problem(det.objects, "objects")
    if why is not None:
        return why
    scores = det.objects["score"]
    if not np.all((scores >= 0) & (scores <= 1)):  # NaN fails both
        return "objects score outside [0, 1]"
    for field, values in (("health", det.health), ("source_seqs", det.source_seqs)):
        if len(values) > limits.max_map_entries or any(
            len(k.encode()) > limits.max_trace_key_bytes for k in values
        ):
            return f"{field} has over {limits.max_map_entries} entries or an over-long key"
    if not all(math.isfinite(v) for v in det.health.values()):
        return "a health score is NaN or infinite"
    return None
