"""The fusion node's logic, without sockets: sync, degraded modes, budget, model, outputs.

`FusionPipeline` takes input messages as they arrive (`add`) and, on each `step`, turns every
camera frame whose radar matching is settled into one `Detections` message:

1. **Sync**: camera frames are paired with radar scans by
`fusion.perception.sync.ApproximateTimeSync`;
   radar points are motion-compensated to the camera's capture time with the latest ego motion.
2. **Budget**: a frame already older than `budget_ms` when it is picked up is dropped and
   counted (``stale``); a frame finished past its deadline is published with ``budget_miss``.
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

`replay_frames` runs recorded messages through the same logic in data time and yields the
assembled frames: how training builds its samples.

Every input that cannot be used is counted by reason in `counters` and logged (rate-limited);
nothing raises out of `add` or `step` for bad data.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from fusion.core.latency import LatencyHistogram
from fusion.core.ratelog import RateLimitedLog
from fusion.errors import CalibrationError, ConfigError, FusionError, ImageError
from fusion.perception.frame import FrameInputs, radar_points, to_reference
from fusion.perception.geometry import CameraModel, check_transform
from fusion.perception.image import camera_image
from fusion.perception.sync import ApproximateTimeSync, SyncedFrame
from fusion.wire.messages import (
    Calibration,
    CameraFrame,
    Detections,
    EgoMotion,
    Message,
    RadarScan,
    empty_detections,
)

log = logging.getLogger(__name__)

#: A radar scan with more points than this is dropped (a 4D radar gives a few thousand).
MAX_RADAR_POINTS = 100_000
#: Camera silent for this long (and radar alive): outputs switch to radar-only.
CAMERA_TIMEOUT_NS = 250_000_000
#: Radar silent for this long: frames go camera-only at once instead of waiting for the deadline.
RADAR_TIMEOUT_NS = 400_000_000
#: Radar calibrations kept (one per radar sensor id); more are rejected and counted.
MAX_RADARS = 16
MODES = ("auto", "camera_only", "radar_only")


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
    slop_ms: float = 80.0
    sync_deadline_ms: float = 10.0  # longest a frame waits for its radar match (ms)
    motion_compensation: bool = True
    camera_sensor: str = "camera_front"
    answer_every_frame: bool = False  # lock-step replay: an unusable frame gets an invalid output
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
            deadline_ns=int(self.cfg.sync_deadline_ms * 1e6),
            on_drop=self._on_sync_drop,
        )
        self.camera: CameraModel | None = None
        self.radar_to_ref: dict[str, np.ndarray] = {}
        self.ego: EgoMotion | None = None
        self.counters: Counter[str] = Counter()
        self.latency_ms = LatencyHistogram()  # capture -> detections decoded
        self.seq = 0
        self._last_camera_ns: int | None = None  # receive time, monotonic
        self._last_radar_ns: int | None = None
        self._radar_only_queue: list[RadarScan] = []
        self._log = RateLimitedLog(log)

    # ---- inputs -------------------------------------------------------------------------

    def add(self, topic: str, msg: Message, now_ns: int | None = None) -> None:
        now_ns = self.clock_ns() if now_ns is None else now_ns
        if isinstance(msg, CameraFrame):
            self._last_camera_ns = now_ns
            self.counters["camera_in"] += 1
            self._radar_only_queue.clear()
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
            self.ego = msg

    def _clean_radar(self, scan: RadarScan) -> RadarScan | None:
        points = scan.points
        if len(points) > MAX_RADAR_POINTS:
            self._reject("radar_too_many_points", f"radar scan {scan.seq} has {len(points)} points")
            return None
        finite = np.ones(len(points), bool)
        for name in ("x", "y", "z", "v_r", "rcs"):
            finite &= np.isfinite(points[name])
        if not finite.all():
            self.counters["radar_points_nonfinite"] += int((~finite).sum())
            scan = scan.replace(points=points[finite])
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

    def _on_sync_drop(self, topic: str, _msg: Message, reason: str) -> None:
        if reason != "camera_only":
            self.counters[f"sync_{topic}_{reason}"] += 1

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
        ready = self.sync.pop_ready(now_ns)
        if not self.radar_alive(now_ns):
            ready += self.sync.flush(now_ns)  # no radar to wait for
        outputs = [out for synced in ready if (out := self._process(synced)) is not None]
        if self._radar_only_queue and not self.camera_alive(now_ns):
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
        inputs, mode, sources = assembled
        return self._run(frame, inputs, mode, sources, picked_ns)

    def assemble(self, synced: SyncedFrame) -> tuple[FrameInputs, str, dict[str, int]] | None:
        """A synced frame's model inputs, the model mode and the input seqs by topic; None
        (counted, logged) when the frame cannot be used."""
        frame = synced.camera
        if self.camera is None:
            self._reject("no_calibration", "no camera calibration yet; frame dropped")
            return None
        image = self._image(frame)
        if image is None:
            return None
        ego = self.ego if self.cfg.motion_compensation else None
        points = radar_points(
            synced,
            ego.speed_mps if ego else None,
            ego.yaw_rate_rps if ego else None,
            self.radar_to_ref,
        )
        mode = "fused" if synced.radar else "camera_only"
        if self.cfg.mode != "auto":
            mode = self.cfg.mode
        sources = {"camera": frame.seq, **({"radar": synced.radar[-1].seq} if synced.radar else {})}
        return FrameInputs(image, points, self.camera), mode, sources

    def _process_radar_only(self, scan: RadarScan) -> Detections | None:
        picked_ns = self.clock_ns()
        if self._stale(scan.capture_ns, picked_ns, scan.clock):
            self._reject("stale", f"radar scan {scan.seq} older than the budget; dropped")
            return None
        if self.camera is None:
            self._reject("no_calibration", "no camera calibration yet; scan dropped")
            return None
        blank = np.zeros((self.camera.height_px, self.camera.width_px, 3), np.uint8)
        points = to_reference(scan.points, self.radar_to_ref.get(scan.sensor_id))
        inputs = FrameInputs(blank, points, self.camera)
        return self._run(scan, inputs, "radar_only", {"radar": scan.seq}, picked_ns)

    def _invalid(self, frame: CameraFrame, picked_ns: int) -> Detections | None:
        """The answer to an unusable frame: nothing, or in lock-step an invalid, empty output."""
        if not self.cfg.answer_every_frame:
            return None
        out = Detections(
            objects=empty_detections(),
            mode="camera_only",
            valid=False,
            source_seqs={"camera": frame.seq},
            seq=self.seq,
            capture_ns=frame.capture_ns,
            sensor_id="fusion",
            clock=frame.clock,
            trace={**input_trace(frame), "synced": picked_ns},
        )
        self.seq += 1
        return out

    def _stale(self, capture_ns: int, now_ns: int, clock: str) -> bool:
        return (
            self.cfg.drop_stale
            and clock == "monotonic"
            and now_ns - capture_ns > self.cfg.budget_ms * 1e6
        )

    def _image(self, frame: CameraFrame) -> np.ndarray | None:
        cfg = self.detector.cfg
        try:
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

    def _run(
        self,
        source: Message,
        inputs: FrameInputs,
        mode: str,
        sources: dict[str, int],
        picked_ns: int,
    ) -> Detections | None:
        trace = input_trace(source)
        trace["synced"] = picked_ns
        try:
            prepared = self.detector.preprocess(inputs.image_bgr, inputs.points, inputs.camera)
            trace["preprocessed"] = self.clock_ns()
            raw = self.detector.infer(prepared, mode)
            trace["inferred"] = self.clock_ns()
            objects, health = self.detector.decode(prepared, raw)
            trace["decoded"] = self.clock_ns()
        except FusionError as exc:
            self._reject("model_error", f"model failed on {mode} input: {exc}")
            return self._invalid(source, picked_ns) if isinstance(source, CameraFrame) else None
        self.counters[mode] += 1
        if health.get("ok", 1.0) == 0.0:
            self.counters["health_flagged"] += 1
        budget_miss = (
            source.clock == "monotonic"
            and trace["decoded"] - source.capture_ns > self.cfg.budget_ms * 1e6
        )
        self.counters["budget_miss"] += budget_miss
        if source.clock == "monotonic":
            self.latency_ms.add((trace["decoded"] - source.capture_ns) / 1e6)
        out = Detections(
            objects=objects if len(objects) else empty_detections(),
            mode=mode,
            valid=True,
            budget_miss=bool(budget_miss),
            health=health,
            source_seqs=sources,
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
    the output's own ``published`` stamp does not overwrite it."""
    trace = dict(source.trace)
    if "published" in trace:
        trace["input_published"] = trace.pop("published")
    return trace


#: In data time a frame waits for its radar match until the data settles it: the sync deadline
#: is a wall-clock guard of the live node, and data time has no wall clock.
DATA_TIME_DEADLINE_MS = 1e9


@dataclass
class AssembledFrame:
    """A frame as `replay_frames` yields it: what the model would be given, and when."""

    inputs: FrameInputs
    mode: str
    sources: dict[str, int]
    capture_ns: int


class _Capture:
    """A `DetectorLike` that keeps each frame's assembled inputs instead of running a model."""

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.cfg = _InputSize(*input_size)
        self.frames: list[tuple[FrameInputs, str]] = []

    def preprocess(self, image_bgr: np.ndarray, radar_points: np.ndarray, camera: CameraModel):
        return FrameInputs(image_bgr, radar_points, camera)

    def infer(self, prepared: FrameInputs, mode: str = "fused") -> None:
        self.frames.append((prepared, mode))

    def decode(self, prepared: FrameInputs, raw: None) -> tuple[np.ndarray, dict[str, float]]:
        return empty_detections(), {}


@dataclass
class _InputSize:
    input_w: int
    input_h: int


def replay_frames(
    messages: Iterable[tuple[str, Message]],
    input_size: tuple[int, int],
    config: PipelineConfig | None = None,
) -> Iterator[AssembledFrame]:
    """Recorded ``(topic, message)`` pairs, in log order, through `FusionPipeline` in data time
    (the clock is the newest capture time seen; nothing is stale; the pipeline steps once all
    messages of one time are in, so their order does not matter; a frame waits until the data
    settles its radar match, as in lock-step replay): one `AssembledFrame` per camera frame the
    node would run the model on. `input_size` (width, height) is the model's, which decides how
    far a JPEG may be decoded at reduced size, as in the node."""
    cfg = dataclasses.replace(
        config or PipelineConfig(),
        drop_stale=False,
        sync_deadline_ms=DATA_TIME_DEADLINE_MS,
    )
    capture = _Capture(input_size)
    now_ns = 0
    pipeline = FusionPipeline(capture, cfg, clock_ns=lambda: now_ns)

    def drain(outputs: list[Detections]) -> Iterator[AssembledFrame]:
        for out in outputs:
            if out.valid:
                inputs, mode = capture.frames.pop(0)
                yield AssembledFrame(inputs, mode, out.source_seqs, out.capture_ns)

    for topic, msg in messages:
        if msg.capture_ns > now_ns:  # step once every message of a log time is in, so their
            yield from drain(pipeline.step(now_ns))  # order within that time cannot matter
            now_ns = int(msg.capture_ns)
        pipeline.add(topic, msg, now_ns)
    yield from drain(pipeline.step(now_ns))
    now_ns += 10 * RADAR_TIMEOUT_NS  # the end of the log: nothing more can settle a frame
    yield from drain(pipeline.step(now_ns))
