"""Messages that are valid on the wire and hostile in meaning, for the fuzzers.

Each kind (`KINDS`) makes, from a seeded generator, a message our own encoder accepts (so any
client can send it) whose content a node must not trust: JPEGs whose header lies about their
size or claims 60000 x 60000 pixels, raw images whose declared size is not their array's, images
of the wrong aspect, stamps an hour ahead or behind, traces and ids over their bounds, radar
scans with NaN, infinite or absurd points (dt_s included), empty scans and absurd periods, ego
motion that is NaN or impossible, calibrations that are NaN, not rigid, not invertible, divide by
zero in the raster kernel or declare images of gigapixels, and crowds of new senders.

`make(kind, rng, now_ns)` returns ``(topic, message)``; `expected(message, now_ns)` is what
`fusion.wire.validate` says of it, so a test knows how each message must be counted.
`tests/test_hostile_fuzz.py` drives them with hypothesis through the fusion node's logic and a
real model; `tests/hostile_flood.py` sends a million of them at running nodes (`make fuzz`).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from fusion.wire import validate
from fusion.wire.messages import (
    RADAR_POINT_DTYPE,
    Calibration,
    CameraFrame,
    EgoMotion,
    Message,
    RadarScan,
)
from tests import nodeproc as npc

#: The calibrated camera of the fuzz runs (16:9, like the tests' nodes).
W, H = npc.W, npc.H
HOUR_NS = 3600 * 10**9
#: Hostile senders use their own ids, so the valid streams' seq accounting stays exact.
HOSTILE_SENSOR = "hostile"

_JPEG_CACHE: dict[tuple[int, int], np.ndarray] = {}


def jpeg(width: int, height: int) -> np.ndarray:
    """A real JPEG of `width` x `height` (cached)."""
    if (width, height) not in _JPEG_CACHE:
        image = np.full((height, width, 3), 77, np.uint8)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 50])
        assert ok
        _JPEG_CACHE[width, height] = data.reshape(-1)
    return _JPEG_CACHE[width, height]


def with_header_size(data: np.ndarray, width: int, height: int) -> np.ndarray:
    """A copy of JPEG `data` whose frame header says `width` x `height`."""
    out = data.copy()
    sof = next(i for i in range(len(out) - 1) if out[i] == 0xFF and out[i + 1] == 0xC0)
    out[sof + 5 : sof + 9] = [height >> 8, height & 255, width >> 8, width & 255]
    return out


def calibration(now_ns: int, **changes: object) -> Calibration:
    """The test camera's calibration (`tests.nodeproc.calibration`), stamped `now_ns`, with
    `changes`."""
    calib = npc.calibration()
    calib.capture_ns = now_ns
    for name, value in changes.items():
        setattr(calib, name, value)
    return calib


def points(n: int) -> np.ndarray:
    out = np.zeros(n, RADAR_POINT_DTYPE)
    out["x"] = np.linspace(5, 40, n)
    out["y"] = np.linspace(-3, 3, n)
    out["rcs"] = 5.0
    return out


# -- the kinds ---------------------------------------------------------------------------------

Rng = np.random.Generator


def _camera(rng: Rng, now_ns: int, **fields: object) -> CameraFrame:
    base = {"image": jpeg(W, H), "encoding": "jpeg", "width_px": W, "height_px": H}
    base.update(fields)
    return CameraFrame(capture_ns=now_ns, sensor_id=HOSTILE_SENSOR, **base)


def jpeg_header_lies(rng: Rng, now_ns: int) -> tuple[str, Message]:
    width, height = (
        [60000, 60000],
        [8192, 8192],
        [int(rng.integers(1, 65536)), int(rng.integers(1, 65536))],
        [W * 2, H * 2],
    )[int(rng.integers(0, 4))]
    data = with_header_size(jpeg(W, H), width, height)
    declared = (width, height) if rng.random() < 0.5 else (W, H)
    return "camera", _camera(rng, now_ns, image=data, width_px=declared[0], height_px=declared[1])


def jpeg_broken(rng: Rng, now_ns: int) -> tuple[str, Message]:
    data = jpeg(W, H)
    choice = int(rng.integers(0, 3))
    if choice == 0:
        data = data[: int(rng.integers(0, len(data)))].copy()  # cut short
    elif choice == 1:
        data = rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8)  # noise
    else:
        data = data.copy()
        data[int(rng.integers(100, len(data)))] ^= 0xFF  # a flipped byte in the scan
    return "camera", _camera(rng, now_ns, image=data)


def raw_size_lies(rng: Rng, now_ns: int) -> tuple[str, Message]:
    encoding = ("bgr8", "rgb8", "mono8")[int(rng.integers(0, 3))]
    height, width = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    shape = (height, width, 3) if encoding != "mono8" else (height, width)
    image = np.zeros(shape, np.uint8)
    declared = (width, height) if rng.random() < 0.3 else (int(rng.integers(0, 2**31)), H)
    return "camera", _camera(
        rng, now_ns, image=image, encoding=encoding, width_px=declared[0], height_px=declared[1]
    )


def wrong_aspect(rng: Rng, now_ns: int) -> tuple[str, Message]:
    size = (int(rng.integers(8, 64)), int(rng.integers(8, 64)))
    return "camera", _camera(rng, now_ns, image=jpeg(*size), width_px=size[0], height_px=size[1])


def stamps(rng: Rng, now_ns: int) -> tuple[str, Message]:
    offset = (HOUR_NS, -HOUR_NS, 2 * 10**9, -(2**62), 2**62)[int(rng.integers(0, 5))]
    clock = ("monotonic", "realtime", "sim")[int(rng.integers(0, 3))]
    topic = ("camera", "radar", "ego_motion", "calibration")[int(rng.integers(0, 4))]
    base = now_ns if clock != "realtime" else 1_700_000_000 * 10**9
    capture_ns = max(-(2**63), min(2**63 - 1, base + offset))
    msg = {
        "camera": lambda: _camera(rng, capture_ns),
        "radar": lambda: RadarScan(points=points(8), sensor_id=HOSTILE_SENSOR),
        "ego_motion": lambda: EgoMotion(speed_mps=5.0, sensor_id=HOSTILE_SENSOR),
        "calibration": lambda: calibration(capture_ns),
    }[topic]()
    msg.capture_ns, msg.clock = capture_ns, clock
    return topic, msg


def bounds(rng: Rng, now_ns: int) -> tuple[str, Message]:
    """Fields over their bounds: a long id, a long trace, long trace keys, a negative seq."""
    msg = RadarScan(points=points(4), capture_ns=now_ns, sensor_id=HOSTILE_SENSOR)
    choice = int(rng.integers(0, 4))
    if choice == 0:
        msg.sensor_id = "s" * int(rng.integers(65, 2000))
    elif choice == 1:
        msg.trace = {f"hop{i}": i for i in range(int(rng.integers(33, 2000)))}
    elif choice == 2:
        msg.trace = {"k" * int(rng.integers(65, 1000)): 1}
    else:
        msg.seq = -int(rng.integers(1, 2**62))
    return "radar", msg


def radar_values(rng: Rng, now_ns: int) -> tuple[str, Message]:
    n = int(rng.integers(0, 64))
    pts = points(n)
    if n:
        field = RADAR_POINT_DTYPE.names[int(rng.integers(0, 6))]
        bad = (np.nan, np.inf, -np.inf, 1e30, -1e30)[int(rng.integers(0, 5))]
        hit = rng.random(n) < (1.0 if rng.random() < 0.3 else 0.3)
        pts[field][hit] = bad
    period = (0, 77_000_000, -1, 2**62)[int(rng.integers(0, 4))]
    return "radar", RadarScan(
        points=pts, capture_ns=now_ns, sensor_id=HOSTILE_SENSOR, scan_period_ns=period
    )


def radar_huge(rng: Rng, now_ns: int) -> tuple[str, Message]:
    n = validate.LIMITS.max_radar_points + int(rng.integers(1, 1000))
    return "radar", RadarScan(points=np.zeros(n, RADAR_POINT_DTYPE), capture_ns=now_ns)


def ego(rng: Rng, now_ns: int) -> tuple[str, Message]:
    name = ("x_m", "y_m", "yaw_rad", "speed_mps", "yaw_rate_rps", "accel_mps2")[
        int(rng.integers(0, 6))
    ]
    value = (np.nan, np.inf, -np.inf, 1e6, -1e308)[int(rng.integers(0, 5))]
    msg = EgoMotion(capture_ns=now_ns, sensor_id=HOSTILE_SENSOR, speed_mps=5.0)
    setattr(msg, name, float(value))
    return "ego_motion", msg


def calibrations(rng: Rng, now_ns: int) -> tuple[str, Message]:
    K = calibration(now_ns).intrinsics.copy()
    T = calibration(now_ns).sensor_to_ref.copy()
    choice = int(rng.integers(0, 11))
    changes: dict[str, object] = {}
    if choice == 0:
        K[int(rng.integers(0, 3)), int(rng.integers(0, 3))] = np.nan
        changes["intrinsics"] = K
    elif choice == 1:
        K[2, 2] = 0.0  # the raster kernel divides by it
        changes["intrinsics"] = K
    elif choice == 2:
        K[0, 0] = (0.0, -5.0, 1e300)[int(rng.integers(0, 3))]
        changes["intrinsics"] = K
    elif choice == 3:
        changes["sensor_to_ref"] = np.zeros((4, 4))
    elif choice == 4:
        changes["sensor_to_ref"] = np.diag([2.0, 1.0, 1.0, 1.0])
    elif choice == 5:
        T[0, 3] = 1e200
        changes["sensor_to_ref"] = T
    elif choice == 6:
        changes["width_px"] = int(rng.integers(2**20, 2**31))
        changes["height_px"] = int(rng.integers(2**20, 2**31))
    elif choice == 7:
        changes["width_px"], changes["height_px"] = 0, -int(rng.integers(1, 100))
    elif choice == 8:
        changes["distortion"] = np.zeros(int(rng.integers(15, 200)))
    elif choice == 9:
        changes["distortion"] = np.array([np.inf, 0.0])
    else:
        changes["intrinsics"] = np.zeros((3, 3))  # a camera without intrinsics, with a size
    return "calibration", calibration(now_ns, **changes)


def crowd(rng: Rng, now_ns: int) -> tuple[str, Message]:
    """A message from one more new sender: the per-sender tables must stay bounded."""
    sender = f"sender{int(rng.integers(0, 2**62))}"
    return "ego_motion", EgoMotion(capture_ns=now_ns, sensor_id=sender, speed_mps=1.0)


KINDS: dict[str, Callable[[Rng, int], tuple[str, Message]]] = {
    "jpeg_header_lies": jpeg_header_lies,
    "jpeg_broken": jpeg_broken,
    "raw_size_lies": raw_size_lies,
    "wrong_aspect": wrong_aspect,
    "stamps": stamps,
    "bounds": bounds,
    "radar_values": radar_values,
    "radar_huge": radar_huge,
    "ego": ego,
    "calibrations": calibrations,
    "crowd": crowd,
}
#: How often each kind is drawn in a flood (the huge radar scans are 2.4 MB each: rare).
WEIGHTS = {kind: (0.002 if kind == "radar_huge" else 1.0) for kind in KINDS}


def make(kind: str, rng: Rng, now_ns: int) -> tuple[str, Message]:
    return KINDS[kind](rng, now_ns)


def expected(msg: Message, now_ns: int) -> str | None:
    """The reason `fusion.wire.validate` rejects `msg` for, or None when it is let through (a
    node may still drop parts of it, or the input, later: counted there)."""
    found = validate.problem(msg, now_ns)
    return None if found is None else found.reason
