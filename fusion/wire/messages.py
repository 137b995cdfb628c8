"""Message types that flow between nodes, and the fixed dtypes of their array payloads.

Every message is a dataclass with a common stamped header (`seq`, `capture_ns`, `sensor_id`,
`clock`, `trace`) plus its own fields. Scalar fields travel in the msgpack header; `numpy` fields
travel as raw buffers (see `fusion.wire.codec` and `docs/wire-format.md`). Each array field has one
fixed dtype, listed in `ARRAY_FIELDS`, so a decoder can reject anything else.

Time is always an integer number of nanoseconds with the unit in the name. `clock` says which
clock `capture_ns` is on:

- ``monotonic``: `time.monotonic_ns()` of the host that captured it (one host only);
- ``realtime``: `time.time_ns()` from a PTP/NTP-disciplined clock (safe across hosts);
- ``sim``: simulation time of a synthetic drive, starting at 0;
- ``assigned``: the data had no timestamps and nominal ones were assigned (e.g. Astyx frames).

The latency `trace` maps a hop name to the `time.monotonic_ns()` at which the message passed it
(``published``, ``received``, ``synced``, ``preprocessed``, ``inferred``, ``decoded`` ...). Hops
append; nothing rewrites an earlier stamp.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

SCHEMA_VERSION = 1

#: Object classes the model detects, by class id.
CLASS_NAMES: tuple[str, ...] = ("car", "truck", "pedestrian", "cyclist")


def class_name(class_id: int) -> str:
    """The name of a class id, or ``class <id>`` for one outside `CLASS_NAMES` (a label must
    never fail on a box from another model or a hostile message)."""
    return CLASS_NAMES[class_id] if 0 <= class_id < len(CLASS_NAMES) else f"class {class_id}"


#: One radar detection, in the radar sensor frame (x forward, y left, z up; metres, m/s).
#: ``v_r`` is the Doppler radial velocity, positive moving away; ``rcs`` is the radar cross
#: section in dBsm (or the sensor's magnitude where RCS is not calibrated); ``dt_s`` is the point's
#: time offset from the scan's ``capture_ns`` (0 for sensors that do not report it).
RADAR_POINT_DTYPE = np.dtype(
    [
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("v_r", "<f4"),
        ("rcs", "<f4"),
        ("dt_s", "<f4"),
    ]
)

#: One detected object in the reference (radar/ego) frame: centre x, y, z (m), size l, w, h (m),
#: yaw (rad, about z, 0 = along x), velocity vx, vy (m/s, over ground), class id into
#: `CLASS_NAMES`, confidence score in [0, 1].
DETECTION_DTYPE = np.dtype(
    [
        ("class_id", "<i4"),
        ("score", "<f4"),
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("l", "<f4"),
        ("w", "<f4"),
        ("h", "<f4"),
        ("yaw", "<f4"),
        ("vx", "<f4"),
        ("vy", "<f4"),
    ]
)

#: One ground-truth object: as a detection, plus a track id stable over a drive and the
#: fraction of the object hidden from the camera (0 visible .. 1 hidden, -1 unknown).
GT_BOX_DTYPE = np.dtype(
    [
        ("class_id", "<i4"),
        ("track_id", "<i4"),
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("l", "<f4"),
        ("w", "<f4"),
        ("h", "<f4"),
        ("yaw", "<f4"),
        ("vx", "<f4"),
        ("vy", "<f4"),
        ("occlusion", "<f4"),
    ]
)

IMAGE_ENCODINGS = ("bgr8", "rgb8", "mono8", "jpeg")
#: The clocks `capture_ns` may be on (see the module docstring).
CLOCKS = ("monotonic", "realtime", "sim", "assigned")
#: How a `Detections` message was made.
DETECTION_MODES = ("fused", "camera_only", "radar_only")

#: An array field's fixed dtype and the numbers of dimensions it may have.
ArraySpec = tuple[np.dtype, tuple[int, ...]]


@dataclass(kw_only=True)
class Message:
    """The stamped header every message carries."""

    seq: int = 0
    capture_ns: int = 0
    sensor_id: str = ""
    clock: str = "monotonic"
    trace: dict[str, int] = field(default_factory=dict)

    #: array field name -> (fixed dtype, allowed numbers of dimensions), per message type.
    ARRAY_FIELDS: ClassVar[dict[str, ArraySpec]] = {}

    def stamp(self, hop: str, now_ns: int) -> None:
        """Record that this message passed `hop` at `now_ns` (monotonic)."""
        self.trace[hop] = int(now_ns)

    def replace(self, **changes: object) -> Message:
        return dataclasses.replace(self, **changes)

    def wire_problem(self) -> str | None:
        """What `docs/wire-format.md` rules out beyond field types and dtypes (a value outside
        its enumeration, an array shape its type does not allow), or None. The codec refuses to
        encode or decode a message with a problem."""
        if self.clock not in CLOCKS:
            return f"clock {self.clock!r:.40} is not one of {', '.join(CLOCKS)}"
        return None


@dataclass(kw_only=True)
class CameraFrame(Message):
    """One camera image. ``image`` is (H, W, 3) uint8 for ``bgr8``/``rgb8``, (H, W) uint8 for
    ``mono8``, and the (N,) uint8 bytes of a JPEG file for ``jpeg`` (then ``width_px`` and
    ``height_px`` give the decoded size)."""

    image: np.ndarray
    encoding: str = "bgr8"
    width_px: int = 0
    height_px: int = 0
    exposure_us: int = 0

    ARRAY_FIELDS: ClassVar[dict[str, ArraySpec]] = {"image": (np.dtype("u1"), (1, 2, 3))}

    def __post_init__(self) -> None:
        if self.encoding != "jpeg" and self.image.ndim >= 2 and not self.width_px:
            self.height_px, self.width_px = int(self.image.shape[0]), int(self.image.shape[1])

    def wire_problem(self) -> str | None:
        if self.encoding not in IMAGE_ENCODINGS:
            return f"encoding {self.encoding!r:.40} is not one of {', '.join(IMAGE_ENCODINGS)}"
        shape = self.image.shape
        fits = {
            "bgr8": len(shape) == 3 and shape[2] == 3,
            "rgb8": len(shape) == 3 and shape[2] == 3,
            "mono8": len(shape) == 2,
            "jpeg": len(shape) == 1,
        }[self.encoding]
        if not fits:
            return f"image of shape {list(shape)} does not fit encoding {self.encoding!r}"
        return super().wire_problem()


@dataclass(kw_only=True)
class RadarScan(Message):
    """One radar scan: (N,) points of `RADAR_POINT_DTYPE` in the radar frame."""

    points: np.ndarray
    scan_period_ns: int = 0

    ARRAY_FIELDS: ClassVar[dict[str, ArraySpec]] = {"points": (RADAR_POINT_DTYPE, (1,))}


@dataclass(kw_only=True)
class Detections(Message):
    """Detected objects for one camera frame, in the reference (radar) frame.

    ``mode`` is ``fused``, ``camera_only`` or ``radar_only``; ``valid`` is False when an input
    it was built from was invalid. ``health`` holds the VAE sensor-health scores (``score``,
    ``recon``, ``kl``; higher is less like training data). ``source_seqs`` names the input
    messages by topic. ``budget_miss`` is True when it was finished past its deadline.
    """

    objects: np.ndarray
    mode: str = "fused"
    valid: bool = True
    budget_miss: bool = False
    health: dict[str, float] = field(default_factory=dict)
    source_seqs: dict[str, int] = field(default_factory=dict)

    ARRAY_FIELDS: ClassVar[dict[str, ArraySpec]] = {"objects": (DETECTION_DTYPE, (1,))}

    def wire_problem(self) -> str | None:
        if self.mode not in DETECTION_MODES:
            return f"mode {self.mode!r:.40} is not one of {', '.join(DETECTION_MODES)}"
        return super().wire_problem()


@dataclass(kw_only=True)
class EgoMotion(Message):
    """Ego vehicle state: planar pose in the drive's world frame and its rates."""

    x_m: float = 0.0
    y_m: float = 0.0
    yaw_rad: float = 0.0
    speed_mps: float = 0.0
    yaw_rate_rps: float = 0.0
    accel_mps2: float = 0.0


@dataclass(kw_only=True)
class GroundTruth(Message):
    """Ground-truth boxes in the reference (radar) frame at ``capture_ns`` (a camera frame's)."""

    boxes: np.ndarray

    ARRAY_FIELDS: ClassVar[dict[str, ArraySpec]] = {"boxes": (GT_BOX_DTYPE, (1,))}


@dataclass(kw_only=True)
class Calibration(Message):
    """Calibration of one sensor (``sensor_id``): ``sensor_to_ref`` is the 4x4 transform taking
    points from this sensor's frame to the reference frame (the radar's); cameras also carry the
    3x3 pinhole ``intrinsics``, OpenCV ``distortion`` coefficients and their image size. For
    non-camera sensors ``intrinsics`` is all zeros and the size is 0."""

    sensor_to_ref: np.ndarray
    intrinsics: np.ndarray
    distortion: np.ndarray
    width_px: int = 0
    height_px: int = 0

    ARRAY_FIELDS: ClassVar[dict[str, ArraySpec]] = {
        "sensor_to_ref": (np.dtype("<f8"), (2,)),
        "intrinsics": (np.dtype("<f8"), (2,)),
        "distortion": (np.dtype("<f8"), (1,)),
    }

    def wire_problem(self) -> str | None:
        if self.sensor_to_ref.shape != (4, 4) or self.intrinsics.shape != (3, 3):
            return (
                f"sensor_to_ref must be 4x4 and intrinsics 3x3, got "
                f"{list(self.sensor_to_ref.shape)} and {list(self.intrinsics.shape)}"
            )
        return super().wire_problem()


#: `ReplayControl.sent_until_ns` once a replay has sent everything: no message is still to come.
SENT_EVERYTHING_NS = 2**63 - 1


@dataclass(kw_only=True)
class ReplayControl(Message):
    """What a player tells the nodes about its replay (topic ``replay_control``, ROS's
    ``/clock`` in spirit), so a node can judge time without confusing a replay with live data.

    Every replay restamps the recorded ``capture_ns`` by one constant offset per pass
    (`fusion.logs.player`). ``rate`` is the playback pace: a message stamped ``c`` was due on
    the player's monotonic clock at ``origin_ns + (c - origin_ns) / rate``; ``rate`` 0 means
    untimed (as fast as possible, or lock-step), where the stamps say nothing about when
    messages are sent. In lock-step (``lockstep`` True) the player sends one after each step of
    the replay: ``order`` lists the topics of the messages it published since its previous
    control message, in publish order (comma-separated), so the consumer can take them in that
    order whatever their sockets delivered first; ``sent_until_ns`` promises that every message
    of the replay with ``capture_ns`` at or before it has been published
    (`SENT_EVERYTHING_NS` at the end); ``final`` marks the last step of a pass.
    """

    rate: float = 1.0
    origin_ns: int = 0
    lockstep: bool = False
    order: str = ""
    sent_until_ns: int = 0
    final: bool = False

    def topics_sent(self) -> list[str]:
        """``order`` as a list (empty when nothing was sent since the previous step)."""
        return self.order.split(",") if self.order else []


def restamp(msg: Message, capture_ns: int) -> Message:
    """Move a replayed or simulated message onto this host's monotonic clock: `capture_ns`
    becomes the given stamp (the recorded one plus the replay's offset), and the trace (stamps
    of another run, on another clock) is replaced by ``{"recorded_capture_ns": <the original
    capture_ns>}``. Returns `msg`."""
    msg.trace = {"recorded_capture_ns": msg.capture_ns}
    msg.capture_ns = capture_ns
    msg.clock = "monotonic"
    return msg


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        CameraFrame,
        RadarScan,
        Detections,
        EgoMotion,
        GroundTruth,
        Calibration,
        ReplayControl,
    )
}


def empty_points(n: int = 0) -> np.ndarray:
    """A zeroed (n,) radar point array."""
    return np.zeros(n, dtype=RADAR_POINT_DTYPE)


def empty_detections(n: int = 0) -> np.ndarray:
    """A zeroed (n,) detection array."""
    return np.zeros(n, dtype=DETECTION_DTYPE)
