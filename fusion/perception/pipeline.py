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
4. **Model**: preprocess, infer, decode, each stamped into the output's trace (``synced``,
   ``preprocessed``, ``inferred``, ``decoded``), with the VAE health score in ``health``.

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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fusion.core.latency import LatencyHistogram
from fusion.core.ratelog import RateLimitedLog
from fusion.errors import CalibrationError, FusionError, ImageError
from fusion.perception.geometry import CameraModel
from fusion.perception.image import camera_image
from fusion.perception.sync import ApproximateTimeSync, SyncedFrame, synced_points
from fusion.wire import validate
from fusion.wire.messages import (
    RADAR_POINT_DTYPE,
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
        rejection = validate.problem(msg, now_ns)
        if rejection is not None:
            self._reject(rejection.reason, rejection.message)
            return
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
        if calib.sensor_id != self.cfg.camera_sensor:
            return  # the radar is the reference frame; other sensors are not fused here
        try:
            self.camera = CameraModel.from_calibration(calib)
        except CalibrationError as exc:
            self._reject("bad_calibration", f"calibration of {calib.sensor_id} rejected: {exc}")

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
        if self.camera is None:
            self._reject("no_calibration", "no camera calibration yet; frame dropped")
            return self._invalid(frame, picked_ns)
        image = self._image(frame)
        if image is None:
            return self._invalid(frame, picked_ns)
        points = np.zeros(0, RADAR_POINT_DTYPE)
        if synced.radar:
            ego = self.ego
            points = synced_points(
                synced,
                ego.speed_mps if ego else 0.0,
                ego.yaw_rate_rps if ego else 0.0,
                compensate=self.cfg.motion_compensation and ego is not None,
            )
        mode = "fused" if synced.radar else "camera_only"
        # A matched radar that gave no usable point is a radar fault, not a fusion.
        valid = not synced.radar or len(points) > 0
        if not valid:
            mode = "camera_only"
        sources = {"camera": frame.seq, **({"radar": synced.radar[-1].seq} if synced.radar else {})}
        return self._run(frame, image, points, mode, sources, picked_ns, valid=valid)

    def _process_radar_only(self, scan: RadarScan) -> Detections | None:
        picked_ns = self.clock_ns()
        if self._stale(scan.capture_ns, picked_ns, scan.clock):
            self._reject("stale", f"radar scan {scan.seq} older than the budget; dropped")
            return None
        if self.camera is None:
            self._reject("no_calibration", "no camera calibration yet; scan dropped")
            return None
        if len(scan.points) == 0:
            self._reject("radar_only_empty", f"radar scan {scan.seq} has no usable point; dropped")
            return None
        blank = np.zeros((self.camera.height_px, self.camera.width_px, 3), np.uint8)
        return self._run(scan, blank, scan.points, "radar_only", {"radar": scan.seq}, picked_ns)

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
        image: np.ndarray,
        points: np.ndarray,
        mode: str,
        sources: dict[str, int],
        picked_ns: int,
        *,
        valid: bool = True,
    ) -> Detections | None:
        trace = input_trace(source)
        trace["synced"] = picked_ns
        try:
            prepared = self.detector.preprocess(image, points, self.camera)
            trace["preprocessed"] = self.clock_ns()
            raw = self.detector.infer(prepared, mode)
            trace["inferred"] = self.clock_ns()
            objects, health = self.detector.decode(prepared, raw)
            trace["decoded"] = self.clock_ns()
        except FusionError as exc:
            self._reject("model_error", f"model failed on {mode} input: {exc}")
            return self._invalid(source, picked_ns) if isinstance(source, CameraFrame) else None
        self.counters[mode] += 1
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
            valid=valid,
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
