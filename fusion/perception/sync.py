"""Time alignment of camera frames with radar scans, and radar motion compensation.

This module owns two things the fusion node does before preprocessing:

- `ApproximateTimeSync` pairs each camera frame with the radar scan(s) nearest in capture time,
  as ROS 2 ``message_filters`` ApproximateTime does (a slop, bounded buffers), plus what that
  lacks: counters (`SyncStats`) and an ``on_drop`` callback for every input dropped or matched
  with nothing, and either a per-frame wall-clock deadline, so a silent radar never stalls the
  camera path (the frame goes out camera-only, marked so), or no deadline at all, so pairing
  depends on the data alone (lock-step replay, training).
- `motion_compensate` moves radar points from their capture time to the camera's, for ego motion
  (constant speed and yaw rate) and for each point's own radial velocity.

The camera drives: every camera frame comes out exactly once, in capture order, while a radar
scan may serve several consecutive camera frames (a 20 Hz camera over a 13 Hz radar). All times
are integer nanoseconds; ``capture_ns`` values of both streams must be on one clock, and the
``now_ns`` given to the methods on one (usually `time.monotonic_ns()`, which need not be the
capture clock).

Offline use (training, evaluation) pairs frames exactly as a lock-step replay does: build the
synchroniser with ``deadline_ns=None``, feed a recording's messages in log order, collect
`pop_ready` after each, and `flush` at the end::

    sync = ApproximateTimeSync(slop_ns=int(DEFAULT_SLOP_MS * 1e6), deadline_ns=None)
    for topic, msg in messages:          # log order
        if topic == "camera":
            sync.add_camera(msg)
        elif topic == "radar":
            sync.add_radar(msg)
        pairs += sync.pop_ready()
    pairs += sync.flush()
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fusion.errors import ConfigError
from fusion.wire.messages import RADAR_POINT_DTYPE, CameraFrame, Message, RadarScan

#: ``on_drop(topic, message, reason)``: topic is ``"camera"`` or ``"radar"``; reason is one of
#: ``overflow`` (buffer full, oldest dropped), ``late`` (arrived too late to be matched with
#: anything), ``unmatched`` (a radar scan that left the buffer having served no camera frame),
#: ``camera_only`` (a camera frame released with no radar; it is still returned),
#: ``clock_jump`` (the message is stamped more than ``clock_jump_ns`` before the newest stamp of
#: its stream: a clock jumped back, or an earlier stamp was bogus; the synchroniser reset and
#: the message is kept) or ``reset`` (a buffered message dropped by that reset).
DropCallback = Callable[[str, Message, str], None]

MATCH_MODES = ("nearest", "all")
#: The pairing slop the fusion node uses by default (ms): a little over one 13 Hz radar period,
#: so every frame has a scan to fuse (motion compensation covers the offset). The lock-step
#: player's window defaults to it.
DEFAULT_SLOP_MS = 80.0
VELOCITY_MODELS = ("radial", "along_x")
#: ``along_x``: rays closer than this to broadside (|cos| of the angle to x) fall back to radial.
ALONG_X_MIN_COS = 0.1
MAX_OBJECT_SPEED_MPS = 50.0


@dataclass
class SyncedFrame:
    """A camera frame with the radar scans matched to it (empty when ``camera_only``).

    ``deadline_passed`` is True when the frame was released before its matching was settled
    (its deadline, a full buffer without a deadline, or `ApproximateTimeSync.flush`): with
    radar, a closer scan might still have been on its way.
    """

    camera: CameraFrame
    radar: list[RadarScan]
    camera_only: bool
    deadline_passed: bool = False


@dataclass
class SyncStats:
    """What the synchroniser did, since it was made.

    ``matched`` / ``camera_only``: camera frames released with / without radar;
    ``radar_unmatched``: scans that left the buffer having served no frame; ``late``: inputs that
    arrived too late to be matched with anything (dropped); ``dropped``: inputs pushed out of a
    full buffer (a scan that already served a frame leaves without being counted); ``unsettled``:
    frames released before their matching was settled (without a deadline: a full camera
    buffer, which releases its oldest frame instead of dropping it; and `flush`);
    ``clock_jumps``: resets for a stamp far behind the newest; ``reset``: buffered inputs they
    dropped.
    """

    matched: int = 0
    camera_only: int = 0
    radar_unmatched: int = 0
    late: int = 0
    dropped: int = 0
    unsettled: int = 0
    clock_jumps: int = 0
    reset: int = 0


@dataclass
class _PendingCamera:
    frame: CameraFrame
    arrived_ns: int
    forced: bool = False  # release at the next pop_ready, settled or not


@dataclass
class _BufferedScan:
    scan: RadarScan
    used: bool = False
    capture_ns: int = field(init=False)

    def __post_init__(self) -> None:
        self.capture_ns = self.scan.capture_ns


class ApproximateTimeSync:
    """Pair camera frames with radar scans by capture time, with a slop and a deadline or none.

    A radar scan matches a camera frame when their capture times differ by at most `slop_ns`.
    With ``match="nearest"`` a frame gets the one nearest matching scan (of two equally near,
    the earlier); with ``"all"``, every matching scan (for accumulating sweeps). A frame is
    released by `pop_ready` as soon as its matching is settled: no scan still to come can match
    it better, judged from the newest scan seen, a lower bound on the radar period
    (`radar_min_period_ns`) and what `complete_until` promised.

    With a deadline (`deadline_ns`, wall-clock time after the frame arrived) a frame whose
    matching is not settled by then is released anyway, with whatever matched so far or
    camera-only; `radar_min_period_ns` then defaults to 0.8 x the scans' ``scan_period_ns`` (0
    when unknown, which means waiting for a scan past the frame). With ``deadline_ns=None`` no
    clock is involved: a frame is released when the data settle it, when `complete_until` says
    no scan that could match it better is still to come, when the camera buffer is full (the
    oldest frame goes, unsettled) or at `flush`; `radar_min_period_ns` defaults to 0, so a
    settled match is exactly the nearest scan of the whole stream, and the same messages in
    the same order give the same pairs however fast they are fed.

    Radar scans of one sensor are assumed to arrive in capture order (one radar stream; give
    each radar its own synchroniser). Buffers hold at most `max_camera` frames and `max_radar`
    scans; when full, the oldest entry is dropped and counted (a camera frame without a
    deadline is released instead).

    One bad stamp never silences it: a frame stamped far ahead would make every later frame
    and scan "late". A message stamped more than `clock_jump_ns` before the newest stamp of its
    own stream (each stream arrives in capture order) means a clock jumped, or that newest
    stamp was bogus: everything buffered is dropped (``reset``), the history is forgotten, the
    jump counted (``clock_jump``), and the message taken as the first of a new timeline.
    """

    def __init__(
        self,
        slop_ns: int = 50_000_000,
        deadline_ns: int | None = 25_000_000,
        *,
        match: str = "nearest",
        max_camera: int = 8,
        max_radar: int = 16,
        radar_min_period_ns: int | None = None,
        clock_jump_ns: int = 1_000_000_000,
        on_drop: DropCallback | None = None,
    ) -> None:
        if slop_ns < 0 or (deadline_ns is not None and deadline_ns < 0):
            raise ConfigError(f"slop_ns ({slop_ns}) and deadline_ns ({deadline_ns}) must be >= 0")
        if match not in MATCH_MODES:
            raise ConfigError(f"match must be one of {MATCH_MODES}, got {match!r}")
        if max_camera < 1 or max_radar < 1:
            raise ConfigError(f"max_camera ({max_camera}) and max_radar ({max_radar}) must be >= 1")
        self.slop_ns = int(slop_ns)
        self.deadline_ns = None if deadline_ns is None else int(deadline_ns)
        self.match = match
        self.max_camera = int(max_camera)
        self.max_radar = int(max_radar)
        self.radar_min_period_ns = radar_min_period_ns
        self.clock_jump_ns = int(clock_jump_ns)
        self.on_drop = on_drop
        self.stats = SyncStats()
        self._cameras: list[_PendingCamera] = []
        self._scans: list[_BufferedScan] = []  # sorted by capture_ns
        self._newest_radar_ns: int | None = None
        self._radar_period_ns = 0
        self._released_camera_ns: int | None = None
        self._complete_ns: int | None = None

    def add_camera(self, frame: CameraFrame, now_ns: int | None = None) -> None:
        """Buffer a camera frame that arrived at `now_ns` (needed only with a deadline)."""
        self._reset_on_jump("camera", frame)
        newest = self._cameras[-1].frame.capture_ns if self._cameras else self._released_camera_ns
        if newest is not None and frame.capture_ns <= newest:
            self.stats.late += 1
            self._drop("camera", frame, "late")
            return
        if self.deadline_ns is None:
            waiting = [p for p in self._cameras if not p.forced]
            if len(waiting) >= self.max_camera:
                waiting[0].forced = True  # released unsettled by the next pop_ready
        elif len(self._cameras) >= self.max_camera:
            self.stats.dropped += 1
            self._drop("camera", self._cameras.pop(0).frame, "overflow")
        self._cameras.append(_PendingCamera(frame, self._now(now_ns)))

    def add_radar(self, scan: RadarScan, now_ns: int | None = None) -> None:
        """Buffer a radar scan that arrived at `now_ns` (needed only with a deadline)."""
        self._reset_on_jump("radar", scan)
        if (
            self._released_camera_ns is not None
            and scan.capture_ns < self._released_camera_ns - self.slop_ns
        ):
            self.stats.late += 1
            self._drop("radar", scan, "late")
            return
        if len(self._scans) >= self.max_radar:
            oldest = self._scans.pop(0)
            if not oldest.used:
                self.stats.dropped += 1
                self._drop("radar", oldest.scan, "overflow")
        keys = [s.capture_ns for s in self._scans]
        self._scans.insert(bisect.bisect_right(keys, scan.capture_ns), _BufferedScan(scan))
        if self._newest_radar_ns is None or scan.capture_ns > self._newest_radar_ns:
            self._newest_radar_ns = scan.capture_ns
        if scan.scan_period_ns > 0:
            self._radar_period_ns = scan.scan_period_ns

    def complete_until(self, until_ns: int) -> None:
        """Promise that every radar scan with ``capture_ns <= until_ns`` has been added (a
        lock-step replay knows what it has sent); frames this settles go out at the next
        `pop_ready`. A scan that breaks the promise is still used where it can be."""
        if self._complete_ns is None or until_ns > self._complete_ns:
            self._complete_ns = int(until_ns)

    def pop_ready(self, now_ns: int | None = None) -> list[SyncedFrame]:
        """Release, in capture order, every camera frame whose matching is settled or whose
        deadline has passed; stamps ``synced`` in each frame's trace (when `now_ns` is given;
        it is needed with a deadline)."""
        if self.deadline_ns is not None and now_ns is None:
            raise ConfigError("a synchroniser with a deadline needs now_ns in pop_ready")
        ready: list[SyncedFrame] = []
        while self._cameras:
            pending = self._cameras[0]
            capture_ns = pending.frame.capture_ns
            candidates = self._candidates(capture_ns)
            settled = self._settled(capture_ns, candidates)
            forced = pending.forced or (
                self.deadline_ns is not None and now_ns - pending.arrived_ns >= self.deadline_ns
            )
            if not settled and not forced:
                break
            self._cameras.pop(0)
            for entry in candidates:
                entry.used = True
            synced = SyncedFrame(
                camera=pending.frame,
                radar=[entry.scan for entry in candidates],
                camera_only=not candidates,
                deadline_passed=not settled,
            )
            if candidates:
                self.stats.matched += 1
            else:
                self.stats.camera_only += 1
                self._drop("camera", pending.frame, "camera_only")
            if not settled and self.deadline_ns is None:
                self.stats.unsettled += 1
            if now_ns is not None:
                pending.frame.stamp("synced", now_ns)
            self._released_camera_ns = capture_ns
            ready.append(synced)
        self._evict()
        return ready

    def flush(self, now_ns: int | None = None) -> list[SyncedFrame]:
        """Release every buffered camera frame now (end of a stream) with what matched so far,
        as `pop_ready` would at their deadlines."""
        for pending in self._cameras:
            pending.forced = True
        return self.pop_ready(now_ns)

    def _reset_on_jump(self, topic: str, msg: Message) -> None:
        """Start a new timeline when `msg` is stamped far behind the newest stamp of its own
        stream. (Behind the *other* stream is only late: a queued input lags a latest-only one
        when the node falls behind.)"""
        if topic == "camera":
            newest = (
                self._cameras[-1].frame.capture_ns if self._cameras else self._released_camera_ns
            )
        else:
            newest = self._newest_radar_ns
        if newest is None or newest - msg.capture_ns <= self.clock_jump_ns:
            return
        self.stats.clock_jumps += 1
        self._drop(topic, msg, "clock_jump")
        for pending in self._cameras:
            self.stats.reset += 1
            self._drop("camera", pending.frame, "reset")
        for entry in self._scans:
            if not entry.used:
                self.stats.reset += 1
                self._drop("radar", entry.scan, "reset")
        self._cameras, self._scans = [], []
        self._newest_radar_ns = self._released_camera_ns = self._complete_ns = None

    @property
    def pending(self) -> tuple[int, int]:
        """(camera frames, radar scans) now buffered."""
        return len(self._cameras), len(self._scans)

    def _candidates(self, capture_ns: int) -> list[_BufferedScan]:
        within = [s for s in self._scans if abs(s.capture_ns - capture_ns) <= self.slop_ns]
        if self.match == "all" or not within:
            return within
        return [min(within, key=lambda s: (abs(s.capture_ns - capture_ns), s.capture_ns))]

    def _now(self, now_ns: int | None) -> int:
        if now_ns is None:
            if self.deadline_ns is not None:
                raise ConfigError("a synchroniser with a deadline needs the arrival time now_ns")
            return 0
        return int(now_ns)

    def _min_period_ns(self) -> int:
        if self.radar_min_period_ns is not None:
            return int(self.radar_min_period_ns)
        if self.deadline_ns is None:
            return 0  # no guessing from the nominal period: exact pairs whatever the jitter
        return int(0.8 * self._radar_period_ns)

    def _settled(self, capture_ns: int, candidates: list[_BufferedScan]) -> bool:
        # The earliest capture time a scan still to come can have.
        bounds = []
        if self._newest_radar_ns is not None:
            bounds.append(self._newest_radar_ns + max(self._min_period_ns(), 1))
        if self._complete_ns is not None:
            bounds.append(self._complete_ns + 1)
        if not bounds:
            return False
        next_ns = max(bounds)
        if next_ns > capture_ns + self.slop_ns:
            return True
        if self.match == "nearest" and candidates:
            return abs(candidates[0].capture_ns - capture_ns) <= next_ns - capture_ns
        return False

    def _evict(self) -> None:
        if self._released_camera_ns is None:
            return
        # Future frames are at or after this capture time; a scan too old for it, or (nearest
        # mode) beaten by a newer scan that is still no later than it, can never match again.
        horizon_ns = (
            self._cameras[0].frame.capture_ns if self._cameras else self._released_camera_ns
        )
        keep: list[_BufferedScan] = []
        for k, entry in enumerate(self._scans):
            useless = entry.capture_ns < horizon_ns - self.slop_ns
            if self.match == "nearest" and k + 1 < len(self._scans):
                useless |= self._scans[k + 1].capture_ns <= horizon_ns
            if not useless:
                keep.append(entry)
            elif not entry.used:
                self.stats.radar_unmatched += 1
                self._drop("radar", entry.scan, "unmatched")
        self._scans = keep

    def _drop(self, topic: str, message: Message, reason: str) -> None:
        if self.on_drop is not None:
            self.on_drop(topic, message, reason)


def ego_displacement(
    dt_s: float | np.ndarray, speed_mps: float, yaw_rate_rps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ego pose change over `dt_s` at constant speed and yaw rate (CTRV), in the starting frame:
    returns ``(dx_m, dy_m, dyaw_rad)`` (arrays shaped like `dt_s`)."""
    dt = np.asarray(dt_s, dtype=np.float64)
    dyaw = yaw_rate_rps * dt
    if abs(yaw_rate_rps) < 1e-6:
        return speed_mps * dt, np.zeros_like(dt), dyaw
    radius_m = speed_mps / yaw_rate_rps
    return radius_m * np.sin(dyaw), radius_m * (1.0 - np.cos(dyaw)), dyaw


def motion_compensate(
    points: np.ndarray,
    dt_s: float,
    ego_speed_mps: float,
    ego_yaw_rate_rps: float,
    *,
    v_r_over_ground: bool = False,
    velocity_model: str = "along_x",
) -> np.ndarray:
    """Move radar points from their capture time to the camera's, `dt_s` seconds later (camera
    capture minus scan capture; negative when the scan is the later one).

    Each point's own time is the scan's plus its ``dt_s`` field, so it moves over
    ``dt_s - point.dt_s``. Two motions are applied. First the point moves with its object's
    over-ground velocity, of which a Doppler radar sees only the radial part ``v_r``:

    - ``velocity_model="along_x"`` (default): objects move parallel to the ego's heading (traffic
      following the road), so the velocity is ``v_r / cos(angle to x)`` along x. Near broadside
      (|cos| < `ALONG_X_MIN_COS`) it is not observable and the point falls back to radial.
    - ``velocity_model="radial"``: the point moves along its ray by ``v_r * dt``; tangential
      motion is ignored.

    On simulated drives ``along_x`` cuts the mean projection error of points on moving objects
    several-fold, while ``radial`` can make it worse than no compensation: traffic beside the
    ego moves at nearly the ego's speed, unseen by the Doppler, so removing the ego motion alone
    displaces it (docs/preprocess.md has the figures). Crossing traffic breaks both models.

    Then the scan is re-expressed in the ego's frame at camera time, the ego moving at constant
    `ego_speed_mps` along x and turning at `ego_yaw_rate_rps` (positive = left) about the sensor
    origin. ``v_r`` is taken as the raw Doppler relative to the moving sensor unless
    `v_r_over_ground` says the sensor already removed ego motion. Assumes the radar frame is the
    ego frame (x along travel); the lever arm of a radar mounted away from the turning centre is
    ignored (< 1 cm at 0.3 rad/s, 2 m, 15 ms).

    Returns a new `RADAR_POINT_DTYPE` array with x, y, z moved and ``dt_s`` set to 0; non-finite
    points stay non-finite.
    """
    if points.dtype != RADAR_POINT_DTYPE:
        raise ValueError(f"points must be RADAR_POINT_DTYPE, got {points.dtype}")
    if velocity_model not in VELOCITY_MODELS:
        raise ConfigError(
            f"velocity_model must be one of {VELOCITY_MODELS}, got {velocity_model!r}"
        )
    out = points.copy()
    if len(points) == 0:
        return out
    x = points["x"].astype(np.float64)
    y = points["y"].astype(np.float64)
    z = points["z"].astype(np.float64)
    v_r = points["v_r"].astype(np.float64)
    dt = float(dt_s) - points["dt_s"].astype(np.float64)
    range_m = np.sqrt(x * x + y * y + z * z)
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = np.where(range_m > 0, x / range_m, 0.0)
        uy = np.where(range_m > 0, y / range_m, 0.0)
        uz = np.where(range_m > 0, z / range_m, 0.0)
    if not v_r_over_ground:
        # Raw Doppler is (v_object - v_ego) . ray; add the ego's part back.
        v_r = v_r + ego_speed_mps * ux
    if velocity_model == "radial":
        x = x + ux * v_r * dt
        y = y + uy * v_r * dt
        z = z + uz * v_r * dt
    else:
        along = np.abs(ux) >= ALONG_X_MIN_COS
        v_x = np.clip(v_r / np.where(along, ux, 1.0), -MAX_OBJECT_SPEED_MPS, MAX_OBJECT_SPEED_MPS)
        x = x + np.where(along, v_x, ux * v_r) * dt
        y = y + np.where(along, 0.0, uy * v_r) * dt
        z = z + np.where(along, 0.0, uz * v_r) * dt
    dx, dy, dyaw = ego_displacement(dt, ego_speed_mps, ego_yaw_rate_rps)
    cos_yaw, sin_yaw = np.cos(dyaw), np.sin(dyaw)
    rel_x, rel_y = x - dx, y - dy
    out["x"] = cos_yaw * rel_x + sin_yaw * rel_y
    out["y"] = -sin_yaw * rel_x + cos_yaw * rel_y
    out["z"] = z
    out["dt_s"] = 0.0
    return out
