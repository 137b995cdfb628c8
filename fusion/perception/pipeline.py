"""The fusion node's logic, without sockets: sync, degraded modes, budget, model, outputs.

`FusionPipeline` takes input messages as they arrive (`add`) and, on each `step`, turns every
camera frame whose radar matching is settled into one `Detections` message:

1. **Sync**: camera frames are paired with radar scans by
`fusion.perception.sync.ApproximateTimeSync`;
   radar points are motion-compensated to the camera's capture time with the ego motion nearest
   in time, unless it is older than `max_ego_age_ms` (counted, logged, and the output's
   ``health`` says so: ``motion_compensated`` 0 and ``ego_age_ms``).
2. **Budget**: a frame already older than `budget_ms` when it is picked up is dropped and
   counted (``stale``); a frame finished past its deadline is published with ``budget_miss``.
   Age is measured from when the frame was due: its capture time, or for a replay at another
   pace the moment its `ReplayControl` says it was due; an untimed replay has no age.
3. **Mode**: ``fused`` when both sensors are healthy; ``camera_only`` when the radar is silent,
   invalid or matched nothing; ``radar_only`` when the camera has been silent for longer than its
   alive timeout (outputs then follow the radar's scans, at the radar's rate).
   ``PipelineConfig.mode`` can hold the model to ``camera_only`` or ``radar_only`` whatever the
   sensors do (the ablation through the live path), pairing frames exactly as in ``auto``.
4. **Model**: `assemble` builds the frame's `FrameInputs` (image, radar points compensated and
   in the reference frame, camera), then preprocess, infer, decode, each stamped into the
   output's trace (``synced``, ``preprocessed``, ``inferred``, ``decoded``), with the health
   report in ``health`` (``ok`` is 0 when the health score is past the model's calibrated
   threshold; such outputs are counted as ``health_flagged``).

**Lock-step** (``lockstep``): the inputs come from a lock-step replay, in the order the player
sent them, and `control` is called with each of its steps. Everything is then decided by the
data alone, so the outputs are the same on any machine: the synchroniser has no wall-clock
deadline (a frame is released when the data or a step settle its pairing), nothing is dropped
for age and no budget miss is counted (the capture stamps fall behind the clock as the replay
runs slower than real time; latency is then measured from the frame's receipt), liveness
(radar-only, camera-only) is judged on capture times, and every frame is answered, an unusable
one with an invalid output.

Every input that cannot be used is counted by reason in `counters` and logged (rate-limited);
nothing raises out of `add` or `step` for bad data. `add` first checks what a message means
(`fusion.wire.validate`: image sizes, calibration, stamps within a window of the clock, bounded
fields, finite values); radar points that are not finite or out of range are dropped and
counted, and a frame whose matched radar has no usable point is answered ``camera_only`` and
not ``valid``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fusion.core.latency import LatencyHistogram
from fusion.core.ratelog import RateLimitedLog
from fusion.errors import CalibrationError, ConfigError, FusionError, ImageError
from fusion.perception.frame import FrameInputs, radar_points, to_reference
from fusion.perception.geometry import CameraModel, check_transform
from fusion.perception.image import camera_image
from fusion.perception.sync import DEFAULT_SLOP_MS, ApproximateTimeSync, SyncedFrame
from fusion.wire import validate
from fusion.wire.messages import (
    RADAR_POINT_DTYPE,
    Calibration,
    CameraFrame,
    Detections,
    EgoMotion,
    Message,
    RadarScan,
    ReplayControl,
    empty_detections,
)

log = logging.getLogger(__name__)

#: A radar scan with more points than this is dropped (a 4D radar gives a few thousand).
MAX_RADAR_POINTS = validate.LIMITS.max_radar_points
#: Radar points beyond these are dropped as out of range (m; m/s; s from the scan's stamp).
MAX_POINT_RANGE_M = 1000.0
MAX_POINT_SPEED_MPS = 500.0
MAX_POINT_DT_S = 1.0
#: An output copies at most this many entries of its input's trace, with keys of at most
#: `MAX_TRACE_KEY_CHARS`, so no input can push an output past the header limit.
MAX_TRACE_COPY = 16
MAX_TRACE_KEY_CHARS = 32
#: Camera silent for this long (and radar alive): outputs switch to radar-only.
CAMERA_TIMEOUT_NS = 250_000_000
#: Radar silent for this long: frames go camera-only at once instead of waiting for the deadline.
RADAR_TIMEOUT_NS = 400_000_000
#: Radar calibrations kept (one per radar sensor id); more are rejected and counted.
MAX_RADARS = 16
MODES = ("auto", "camera_only", "radar_only")
#: Ego motion messages kept to find the one nearest a frame (20 Hz: the last 0.8 s).
EGO_BUFFER = 16


@dataclass
class AssembledFrame:
    """A synced frame as the model will see it: its inputs, the mode to run the model in, the
    input seqs by topic, marks for the output's health (how the radar was compensated), and
    whether the inputs were valid (a matched radar scan with no usable point is not)."""

    inputs: FrameInputs
    mode: str
    sources: dict[str, int]
    health: dict[str, float] = field(default_factory=dict)
    valid: bool = True


class DetectorLike:
    """What the pipeline needs of a model (`fusion.model.detector.Detector` provides it)."""

    cfg: object

    def preprocess(self, image_bgr: np.ndarray, radar_points: np.ndarray, camera: CameraModel): ...
    def infer(self, prepared, mode: str = "fused"): ...
    def decode(self, prepared, raw) -> tuple[np.ndarray, dict[str, float]]: ...


@dataclass
class PipelineConfig:
    budget_ms: float = 50.0  # capture -> detections deadline; default one 20 Hz camera period
    drop_stale: bool = True  # drop frames already older than the budget when picked up
    # a radar scan matches a frame within this much capture time; a little over one 13 Hz radar
    # period, so every frame has a scan to fuse (motion compensation covers the offset)
    slop_ms: float = DEFAULT_SLOP_MS
    sync_deadline_ms: float = 10.0  # longest a frame waits for its radar match (ms)
    motion_compensation: bool = True
    max_ego_age_ms: float = 200.0  # ego motion this far from a frame's capture is not used
    camera_sensor: str = "camera_front"
    answer_every_frame: bool = False  # lock-step replay: an unusable frame gets an invalid output
    lockstep: bool = False  # decide by the data alone (see the module docstring)
    mode: str = "auto"  # auto (follow the sensors), or hold the model to camera_only/radar_only

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"pipeline mode {self.mode!r} is not one of {MODES}")


class FusionPipeline:
    def __init__(
        self,
        detector: DetectorLike,
        config: PipelineConfig | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.detector = detector
        self.cfg = config or PipelineConfig()
        self.clock_ns = clock_ns
        self.sync = ApproximateTimeSync(
            slop_ns=int(self.cfg.slop_ms * 1e6),
            deadline_ns=None if self.cfg.lockstep else int(self.cfg.sync_deadline_ms * 1e6),
            on_drop=self._on_sync_drop,
        )
        self.answer_every_frame = self.cfg.answer_every_frame or self.cfg.lockstep
        self.camera: CameraModel | None = None
        self.radar_to_ref: dict[str, np.ndarray] = {}
        self.egos: deque[EgoMotion] = deque(maxlen=EGO_BUFFER)
        self.counters: Counter[str] = Counter()
        self.latency_ms = LatencyHistogram()  # due (capture) or, untimed, receipt -> decoded
        self.seq = 0
        self._last_camera_ns: int | None = None  # receive time, monotonic
        self._last_radar_ns: int | None = None
        self._radar_only_queue: list[RadarScan] = []
        self._answers: list[Detections] = []  # lock-step answers to frames the sync dropped
        self._data_ns = 0  # lock-step: the newest capture time fed, the clock of liveness
        self._end_of_replay = False
        self._pace: tuple[float, int] | None = None  # a replay's (rate, origin_ns)
        # Lock-step: frames wait for their step, so their images are decoded meanwhile, beside
        # the model (OpenCV releases the GIL); keyed by the frame's identity.
        self._decoder = ThreadPoolExecutor(1, "decode-ahead") if self.cfg.lockstep else None
        self._decoded: dict[int, Future] = {}
        self._log = RateLimitedLog(log)

    # ---- inputs -------------------------------------------------------------------------

    def add(self, topic: str, msg: Message, now_ns: int | None = None) -> None:
        now_ns = self.clock_ns() if now_ns is None else now_ns
        # Lock-step replays carry the recording's own stamps, which fall behind this host's
        # clock as the replay runs slower than real time: their window is not checked.
        rejection = validate.problem(msg, now_ns, check_stamps=not self.cfg.lockstep)
        if rejection is not None:
            self._reject(rejection.reason, rejection.message)
            if isinstance(msg, CameraFrame) and (answer := self._invalid(msg, now_ns)):
                self._answers.append(answer)  # lock-step: a player waits for every frame
            return
        if self.cfg.lockstep and isinstance(msg, CameraFrame | RadarScan):
            self._data_ns = max(self._data_ns, msg.capture_ns)
            now_ns = self._data_ns
        if isinstance(msg, CameraFrame):
            self._last_camera_ns = now_ns
            self.counters["camera_in"] += 1
            self._radar_only_queue.clear()
            self.prefetch(msg)
            self.sync.add_camera(msg, now_ns)
        elif isinstance(msg, RadarScan):
            self.counters["radar_in"] += 1
            scan = self._clean_radar(msg)
            if scan is None:
                return
            self._last_radar_ns = now_ns
            self.sync.add_radar(scan, now_ns)
            if not self.camera_alive(now_ns):
                self._radar_only_queue.append(scan)
        elif isinstance(msg, Calibration):
            self._set_calibration(msg)
        elif isinstance(msg, EgoMotion):
            self.egos.append(msg)
        elif isinstance(msg, ReplayControl):
            self._pace = (msg.rate, msg.origin_ns)

    def feed(self, topic: str, msg: Message) -> list[Detections]:
        """One input in the order a lock-step replay sent it: a `ReplayControl` step goes to
        `control` (returning its outputs), anything else to `add`. The fusion node and
        `tests/process_replay.py` feed a lock-step replay through this one door."""
        if isinstance(msg, ReplayControl):
            return self.control(msg)
        self.add(topic, msg)
        return []

    def prefetch(self, frame: CameraFrame) -> None:
        """Lock-step: start decoding `frame`'s image now, in a thread beside the model; the
        frame, once added and synced, uses it (a node calls this as frames arrive, before their
        step)."""
        if self._decoder is not None and id(frame) not in self._decoded:
            size = (self.detector.cfg.input_w, self.detector.cfg.input_h)
            self._decoded[id(frame)] = self._decoder.submit(camera_image, frame, size)

    def control(self, msg: ReplayControl, now_ns: int | None = None) -> list[Detections]:
        """A replay's control message: its pace (see `ReplayControl`) and, in lock-step, a step:
        what it promises settles frames, which are processed now; the final step releases
        everything. Returns the outputs to publish."""
        self.add("replay_control", msg, now_ns)
        if not (self.cfg.lockstep and msg.lockstep):
            return []
        if msg.final:
            self._end_of_replay = True
        else:
            self.sync.complete_until(msg.sent_until_ns)
        return self.step(now_ns)

    def _clean_radar(self, scan: RadarScan) -> RadarScan | None:
        points = scan.points
        if len(points) > MAX_RADAR_POINTS:
            self._reject("radar_too_many_points", f"radar scan {scan.seq} has {len(points)} points")
            return None
        finite = np.ones(len(points), bool)
        for name in RADAR_POINT_DTYPE.names:
            finite &= np.isfinite(points[name])
        with np.errstate(invalid="ignore"):
            in_range = (
                (np.abs(points["x"]) <= MAX_POINT_RANGE_M)
                & (np.abs(points["y"]) <= MAX_POINT_RANGE_M)
                & (np.abs(points["z"]) <= MAX_POINT_RANGE_M)
                & (np.abs(points["v_r"]) <= MAX_POINT_SPEED_MPS)
                & (np.abs(points["dt_s"]) <= MAX_POINT_DT_S)
            )
        usable = finite & in_range
        if not usable.all():
            for reason, dropped in (
                ("radar_points_nonfinite", ~finite),
                ("radar_points_out_of_range", finite & ~in_range),
            ):
                if dropped.any():
                    self.counters[reason] += int(dropped.sum())
            scan = scan.replace(points=points[usable])
        if len(scan.points) == 0:
            self.counters["radar_empty"] += 1  # kept: the radar is alive, its scan is not usable
        return scan

    def _set_calibration(self, calib: Calibration) -> None:
        try:
            if calib.sensor_id == self.cfg.camera_sensor:
                self.camera = CameraModel.from_calibration(calib)
                return
            if calib.width_px > 0:
                return  # another camera: not fused here
            transform = check_transform(calib.sensor_to_ref, f"{calib.sensor_id} sensor_to_ref")
        except CalibrationError as exc:
            self._reject("bad_calibration", f"calibration of {calib.sensor_id} rejected: {exc}")
            return
        if calib.sensor_id not in self.radar_to_ref and len(self.radar_to_ref) >= MAX_RADARS:
            self._reject("too_many_radars", f"radar calibration {calib.sensor_id!r} ignored")
            return
        self.radar_to_ref[calib.sensor_id] = transform

    def _on_sync_drop(self, topic: str, msg: Message, reason: str) -> None:
        if reason != "camera_only":
            self._decoded.pop(id(msg), None)
            self.counters[f"sync_{topic}_{reason}"] += 1
        if topic == "camera" and reason != "camera_only" and self.answer_every_frame:
            self._answers.append(self._invalid(msg, self.clock_ns()))

    def _reject(self, reason: str, message: str) -> None:
        self.counters[reason] += 1
        self._log.warning(reason, message)

    def camera_alive(self, now_ns: int) -> bool:
        return (
            self._last_camera_ns is not None and now_ns - self._last_camera_ns <= CAMERA_TIMEOUT_NS
        )

    def radar_alive(self, now_ns: int) -> bool:
        return self._last_radar_ns is not None and now_ns - self._last_radar_ns <= RADAR_TIMEOUT_NS

    # ---- processing ---------------------------------------------------------------------

    def step(self, now_ns: int | None = None) -> list[Detections]:
        """Process every frame that is ready; returns the outputs to publish."""
        now_ns = self.clock_ns() if now_ns is None else now_ns
        live_ns = self._data_ns if self.cfg.lockstep else now_ns
        ready = self.sync.pop_ready(now_ns)
        if self._end_of_replay or (not self.cfg.lockstep and not self.radar_alive(now_ns)):
            ready += self.sync.flush(now_ns)  # no radar to wait for
            self._end_of_replay = False
        outputs, self._answers = self._answers, []
        outputs += [out for synced in ready if (out := self._process(synced)) is not None]
        if self._radar_only_queue and not self.camera_alive(live_ns):
            scans, self._radar_only_queue = self._radar_only_queue, []
            outputs += [
                out for scan in scans if (out := self._process_radar_only(scan)) is not None
            ]
        return outputs

    def _process(self, synced: SyncedFrame) -> Detections | None:
        frame = synced.camera
        picked_ns = self.clock_ns()
        if self._stale(frame.capture_ns, picked_ns, frame.clock):
            self._reject("stale", f"camera frame {frame.seq} older than the budget; dropped")
            return None
        assembled = self.assemble(synced)
        if assembled is None:
            return self._invalid(frame, picked_ns)
        return self._run(frame, assembled, picked_ns)

    def assemble(self, synced: SyncedFrame) -> AssembledFrame | None:
        """A synced frame as the model will see it (`AssembledFrame`); None (counted, logged)
        when the frame cannot be used."""
        frame = synced.camera
        if self.camera is None:
            self._reject("no_calibration", "no camera calibration yet; frame dropped")
            return None
        image = self._image(frame)
        if image is None:
            return None
        points = np.zeros(0, RADAR_POINT_DTYPE)
        marks: dict[str, float] = {}
        if synced.radar:
            ego, marks = self._ego_for(frame) if self.cfg.motion_compensation else (None, {})
            points = radar_points(
                synced,
                ego.speed_mps if ego else None,
                ego.yaw_rate_rps if ego else None,
                self.radar_to_ref,
            )
        mode = "fused" if synced.radar else "camera_only"
        # A matched radar that gave no usable point is a radar fault, not a fusion.
        valid = not synced.radar or len(points) > 0
        if not valid:
            mode = "camera_only"
        if self.cfg.mode != "auto":
            mode = self.cfg.mode
        sources = {"camera": frame.seq, **({"radar": synced.radar[-1].seq} if synced.radar else {})}
        return AssembledFrame(FrameInputs(image, points, self.camera), mode, sources, marks, valid)

    def _ego_for(self, frame: CameraFrame) -> tuple[EgoMotion | None, dict[str, float]]:
        """The ego motion nearest the frame's capture (of two equally near, the earlier), if it
        is recent enough to compensate with, and the marks for the output's health."""
        if not self.egos:
            return None, {}
        ego = min(self.egos, key=lambda e: (abs(e.capture_ns - frame.capture_ns), e.capture_ns))
        age_ms = abs(frame.capture_ns - ego.capture_ns) / 1e6
        if age_ms <= self.cfg.max_ego_age_ms:
            return ego, {"motion_compensated": 1.0, "ego_age_ms": age_ms}
        self._reject(
            "ego_motion_stale",
            f"ego motion {age_ms:.0f} ms from camera frame {frame.seq} (limit "
            f"{self.cfg.max_ego_age_ms:g} ms); radar not motion-compensated",
        )
        return None, {"motion_compensated": 0.0, "ego_age_ms": age_ms}

    def _process_radar_only(self, scan: RadarScan) -> Detections | None:
        picked_ns = self.clock_ns()
        if self._stale(scan.capture_ns, picked_ns, scan.clock):
            self._reject("stale", f"radar scan {scan.seq} older than the budget; dropped")
            return None
        if self.camera is None:
            self._reject("no_calibration", "no camera calibration yet; scan dropped")
            return self._invalid(scan, picked_ns)
        if len(scan.points) == 0:
            self._reject("radar_only_empty", f"radar scan {scan.seq} has no usable point; dropped")
            return None
        blank = np.zeros((self.camera.height_px, self.camera.width_px, 3), np.uint8)
        points = to_reference(scan.points, self.radar_to_ref.get(scan.sensor_id))
        inputs = FrameInputs(blank, points, self.camera)
        return self._run(scan, AssembledFrame(inputs, "radar_only", {"radar": scan.seq}), picked_ns)

    def _invalid(self, frame: Message, picked_ns: int) -> Detections | None:
        """The answer to an unusable frame (or, radar-only, scan): nothing, or in lock-step an
        invalid, empty output."""
        if not self.answer_every_frame:
            return None
        camera = isinstance(frame, CameraFrame)
        out = Detections(
            objects=empty_detections(),
            mode="camera_only" if camera else "radar_only",
            valid=False,
            source_seqs={"camera" if camera else "radar": frame.seq},
            seq=self.seq,
            capture_ns=frame.capture_ns,
            sensor_id="fusion",
            clock=frame.clock,
            trace={**input_trace(frame), "synced": picked_ns},
        )
        self.seq += 1
        return out

    def _stale(self, capture_ns: int, now_ns: int, clock: str) -> bool:
        due_ns = self._due_ns(capture_ns, clock)
        return (
            self.cfg.drop_stale
            and due_ns is not None
            and now_ns - due_ns > self.cfg.budget_ms * 1e6
        )

    def _due_ns(self, capture_ns: int, clock: str) -> int | None:
        """When a message stamped `capture_ns` was due on this host's monotonic clock: its
        stamp, or as a replay's `ReplayControl` maps it; None where age means nothing (another
        clock, an untimed replay, lock-step)."""
        if clock != "monotonic" or self.cfg.lockstep:
            return None
        if self._pace is None:
            return capture_ns
        rate, origin_ns = self._pace
        if rate <= 0:
            return None
        return origin_ns + int((capture_ns - origin_ns) / rate)

    def _image(self, frame: CameraFrame) -> np.ndarray | None:
        cfg = self.detector.cfg
        decoded = self._decoded.pop(id(frame), None)
        try:
            if decoded is not None:
                image = decoded.result()
            else:
                image = camera_image(frame, (cfg.input_w, cfg.input_h))
        except ImageError as exc:
            self._reject("bad_image", str(exc))
            return None
        expected = self.camera.width_px / self.camera.height_px
        if abs(image.shape[1] / image.shape[0] - expected) > 0.02 * expected:
            self._reject(
                "bad_image",
                f"camera frame {frame.seq} is {image.shape[1]}x{image.shape[0]}, calibration "
                f"says {self.camera.width_px}x{self.camera.height_px}",
            )
            return None
        return image

    def _run(self, source: Message, frame: AssembledFrame, picked_ns: int) -> Detections | None:
        trace = input_trace(source)
        trace["synced"] = picked_ns
        inputs, mode = frame.inputs, frame.mode
        try:
            prepared = self.detector.preprocess(inputs.image_bgr, inputs.points, inputs.camera)
            trace["preprocessed"] = self.clock_ns()
            raw = self.detector.infer(prepared, mode)
            trace["inferred"] = self.clock_ns()
            objects, health = self.detector.decode(prepared, raw)
            trace["decoded"] = self.clock_ns()
        except FusionError as exc:
            self._reject("model_error", f"model failed on {mode} input: {exc}")
            return self._invalid(source, picked_ns)
        self.counters[mode] += 1
        if health.get("ok", 1.0) == 0.0:
            self.counters["health_flagged"] += 1
        due_ns = self._due_ns(source.capture_ns, source.clock)
        budget_miss = due_ns is not None and trace["decoded"] - due_ns > self.cfg.budget_ms * 1e6
        self.counters["budget_miss"] += budget_miss
        start_ns = trace.get("received") if due_ns is None else due_ns
        if start_ns is not None:
            self.latency_ms.add((trace["decoded"] - start_ns) / 1e6)
        out = Detections(
            objects=objects if len(objects) else empty_detections(),
            mode=mode,
            valid=frame.valid,
            budget_miss=bool(budget_miss),
            health={**health, **frame.health},
            source_seqs=frame.sources,
            seq=self.seq,
            capture_ns=source.capture_ns,
            sensor_id="fusion",
            clock=source.clock,
            trace=trace,
        )
        self.seq += 1
        return out


def input_trace(source: Message) -> dict[str, int]:
    """The input's trace for an output: its ``published`` hop becomes ``input_published`` so
    the output's own ``published`` stamp does not overwrite it. At most `MAX_TRACE_COPY` entries
    with keys of at most `MAX_TRACE_KEY_CHARS` are copied."""
    trace: dict[str, int] = {}
    for hop, stamp_ns in source.trace.items():
        if len(trace) == MAX_TRACE_COPY:
            break
        if len(hop) <= MAX_TRACE_KEY_CHARS:
            trace[hop] = stamp_ns
    if "published" in trace:
        trace["input_published"] = trace.pop("published")
    return trace
