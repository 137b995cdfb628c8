"""Rerun views: a recording exported to an ``.rrd`` file, and the running graph served live.

Both go through one `RerunLogger`, which turns ``(topic, message, log_time_ns)`` into Rerun
archetypes on two timelines: ``capture_time`` (each message's ``capture_ns``: a duration for the
``sim``, ``monotonic`` and ``assigned`` clocks, a timestamp for ``realtime``; the first message
decides) and ``frame`` (the camera frame's ``seq``; other messages take the latest frame's, and
`Detections` the frame they were made from). The entities:

- ``camera/image``: EncodedImage (a `CameraFrame`'s JPEG bytes as recorded) or Image (raw);
- ``camera/image/radar``: Points2D, a `RadarScan` projected, coloured by radial velocity;
- ``camera/image/detections``, ``camera/image/ground_truth``: Boxes2D around the projected 3D
  boxes of `Detections` and `GroundTruth`;
- ``world/ego``: Transform3D, the `EgoMotion` planar pose; ``world/ego_path``: LineStrips3D, the
  path so far (a vertex a metre, the latest `EGO_PATH_MAX_VERTICES`, logged once a second);
- ``world/ego/camera``: Transform3D + Pinhole from the camera's `Calibration`;
- ``world/ego/radar``: Points3D; ``world/ego/detections``, ``world/ego/ground_truth``: Boxes3D
  labelled with class and score (detections) or class and track (ground truth);
- ``latency/<stage>``: Scalars (ms) per `fusion.core.latency.STAGES` stage of a `Detections`
  on the monotonic clock (the log time is the recorder's, or the live view's receipt);
- ``health/<key>``: Scalars from `Detections.health` (``health/score`` the VAE's);
- ``counters/...``: Scalars: points and objects per message, running totals of budget misses,
  invalid outputs and skipped messages (``counters/skipped/<reason>``), and in a live view the
  subscribers' counters (``counters/inputs/<topic>/<counter>``).

The reference (radar) frame is taken as the ego frame: points and boxes sit under ``world/ego``
as they are. Class colours come from an `rr.AnnotationContext` (the class ids are logged);
ground truth is white. A message that does not decode or that `fusion.wire.validate` refuses is
counted under ``counters/skipped/<reason>``, logged (rate-limited) and skipped. Only one camera is
shown: the first with a calibration or a frame; other cameras' messages are skipped
(``other_camera``). Calibrations of non-camera sensors are not drawn (the radar is the reference
frame).

A live view serves a gRPC proxy (`rr.GrpcServerSink`) on ``--host`` (loopback by default), which
buffers what was logged for late viewers; ``--rerun-web-port`` also starts Rerun's own web viewer
(the ``rerun`` program of the installed ``rerun-sdk``, bound to the same host) pointed at it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import rerun as rr
import rerun.blueprint as rrb

from fusion.core.latency import STAGES, stage_latencies_ms
from fusion.core.ratelog import RateLimitedLog
from fusion.errors import CalibrationError, DecodeError, FusionError, RecordingError
from fusion.logs.reader import RecordingReader
from fusion.perception.geometry import CameraModel
from fusion.runtime import node
from fusion.views.live import LIVE_TOPICS, LiveSource
from fusion.wire import validate
from fusion.wire.messages import (
    CLASS_NAMES,
    Calibration,
    CameraFrame,
    Detections,
    EgoMotion,
    GroundTruth,
    Message,
    RadarScan,
    class_name,
)

log = logging.getLogger(__name__)

APPLICATION_ID = "fusion"
CAPTURE_TIMELINE = "capture_time"
FRAME_TIMELINE = "frame"
#: Rerun's own default ports: the gRPC proxy and its web viewer.
DEFAULT_GRPC_PORT = 9876
#: Radar points are coloured from blue (approaching) to red (receding), saturating at this speed.
VELOCITY_SATURATION_MPS = 10.0
RADAR_RADIUS_PX = 3.0
RADAR_RADIUS_M = 0.15
#: The ego path gets a vertex each time the ego has moved this far ...
EGO_PATH_STEP_M = 1.0
#: ... and is logged at most this often (capture time), as the latest vertices (a bounded row).
EGO_PATH_PERIOD_NS = 1_000_000_000
EGO_PATH_MAX_VERTICES = 1000
#: Pinhole frustum length in the 3D view (m).
FRUSTUM_LENGTH_M = 2.0
#: The 3D view's eye and where it looks, in the ego frame (m): behind and above the ego.
CHASE_EYE_M = (-18.0, 0.0, 10.0)
CHASE_TARGET_M = (20.0, 0.0, 0.0)
#: Class colours (RGB) by class id into `CLASS_NAMES`; ground truth is `GT_COLOR`.
CLASS_COLORS = {0: (60, 200, 60), 1: (255, 160, 0), 2: (230, 80, 230), 3: (0, 200, 255)}
GT_COLOR = (255, 255, 255)
#: How often a live view logs its subscribers' counters (s).
LIVE_COUNTERS_PERIOD_S = 1.0
#: Longest wait for ``rerun --serve-web`` to start listening (s).
WEB_VIEWER_START_S = 30.0
_COLOR_MODELS = {"bgr8": "BGR", "rgb8": "RGB", "mono8": "L"}


def stage_entity(stage: str) -> str:
    """The entity path of a latency stage (``capture -> detections`` -> ``latency/capture_to_
    detections``)."""
    return "latency/" + stage.replace(" -> ", "_to_").replace(" ", "_")


def velocity_colors(v_r_mps: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB from radial velocities: blue approaching, red receding."""
    speed = np.asarray(v_r_mps, np.float32)
    t = np.clip((speed + VELOCITY_SATURATION_MPS) / (2 * VELOCITY_SATURATION_MPS), 0.0, 1.0)
    t = np.nan_to_num(t, nan=0.5)
    return np.stack([255 * t, np.full_like(t, 64), 255 * (1 - t)], axis=1).astype(np.uint8)


def blueprint() -> rrb.Blueprint:
    """The default layout: camera and 3D scene side by side, latency, health and counters
    below, the time panel open."""
    return rrb.Blueprint(
        rrb.Vertical(
            rrb.Horizontal(
                rrb.Spatial2DView(origin="camera/image", name="camera"),
                # Seen from the ego (its frame is the view's), the world and the path behind it.
                rrb.Spatial3DView(
                    origin="world/ego",
                    contents="/world/**",
                    name="3D",
                    eye_controls=rrb.EyeControls3D(
                        position=CHASE_EYE_M, look_target=CHASE_TARGET_M, eye_up=(0.0, 0.0, 1.0)
                    ),
                ),
                column_shares=[3, 2],
            ),
            rrb.Horizontal(
                rrb.TimeSeriesView(origin="latency", name="latency (ms)"),
                rrb.TimeSeriesView(origin="health", name="health"),
                rrb.TimeSeriesView(origin="counters", name="counters"),
            ),
            row_shares=[3, 1],
        ),
        rrb.BlueprintPanel(state="collapsed"),
        rrb.SelectionPanel(state="collapsed"),
        rrb.TimePanel(state="collapsed", timeline=CAPTURE_TIMELINE),
    )


class RerunLogger:
    """Logs our messages to a `rr.RecordingStream` as Rerun archetypes (see the module
    docstring for the entities). `log` takes messages in log order; `skip` counts one that could
    not be used. `logged` counts messages logged by topic, `skipped` those skipped by reason.
    Detections scoring under `min_score` are not drawn."""

    def __init__(self, rec: rr.RecordingStream, min_score: float = 0.0) -> None:
        self.rec = rec
        self.min_score = min_score
        self.logged: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.camera_id: str | None = None
        self.camera: CameraModel | None = None
        self.frame_seq = 0
        self.image_size: tuple[int, int] | None = None
        self.budget_misses = 0
        self.invalid_outputs = 0
        self._timestamps: bool | None = None  # capture_time is a timestamp (realtime clock)
        self._path: list[np.ndarray] = []
        self._path_logged_ns: int | None = None
        self._log = RateLimitedLog(log)
        self._log_static()

    def _log_static(self) -> None:
        rec = self.rec
        rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        rec.log(
            "/",
            rr.AnnotationContext(
                [
                    rr.AnnotationInfo(id=i, label=name, color=CLASS_COLORS.get(i, GT_COLOR))
                    for i, name in enumerate(CLASS_NAMES)
                ]
            ),
            static=True,
        )
        for name, _, _ in STAGES:
            rec.log(stage_entity(name), rr.SeriesLines(names=name), static=True)

    # -- the one entry point -------------------------------------------------------------------

    def log(self, topic: str, msg: Message, log_time_ns: int) -> bool:
        """Log `msg` (received or recorded at `log_time_ns`, monotonic); False when skipped."""
        self._set_time(msg.capture_ns, msg.clock)
        rejection = validate.problem(msg, check_stamps=False)  # a view draws, it does not sync
        if rejection is not None:
            self.skip(rejection.reason, rejection.message)
            return False
        if isinstance(msg, CameraFrame):
            done = self._camera(msg)
        elif isinstance(msg, RadarScan):
            done = self._radar(msg)
        elif isinstance(msg, Detections):
            done = self._detections(msg, log_time_ns)
        elif isinstance(msg, GroundTruth):
            done = self._ground_truth(msg)
        elif isinstance(msg, EgoMotion):
            done = self._ego(msg)
        elif isinstance(msg, Calibration):
            done = self._calibration(msg)
        else:
            done = False  # nothing to show (a replay's control messages)
        if done:
            self.logged[topic] += 1
        return done

    def skip(self, reason: str, message: str) -> None:
        """Count a message that could not be used, at the stream's current time (the start of
        the capture timeline if nothing had a time yet: a row without a time would be static)."""
        if self._timestamps is None:
            self._set_time(0, "sim")
        self.skipped[reason] += 1
        self._log.warning(reason, f"skipped: {message}")
        self.rec.log(f"counters/skipped/{reason}", rr.Scalars(self.skipped[reason]))

    def _set_time(self, capture_ns: int, clock: str) -> None:
        if self._timestamps is None:
            self._timestamps = clock == "realtime"
        if self._timestamps:
            self.rec.set_time(CAPTURE_TIMELINE, timestamp=np.datetime64(capture_ns, "ns"))
        else:
            self.rec.set_time(CAPTURE_TIMELINE, duration=np.timedelta64(capture_ns, "ns"))
        self.rec.set_time(FRAME_TIMELINE, sequence=self.frame_seq)

    def _is_our_camera(self, sensor_id: str) -> bool:
        if self.camera_id is None:
            self.camera_id = sensor_id
        if sensor_id != self.camera_id:
            self.skip("other_camera", f"camera {sensor_id!r:.40}: showing {self.camera_id!r}")
            return False
        return True

    def _projection(self) -> CameraModel | None:
        """The camera, scaled to the size of the frames it sends."""
        camera, size = self.camera, self.image_size
        if camera is None or size is None or size == (camera.width_px, camera.height_px):
            return camera
        return camera.scaled(*size)

    # -- per message type ----------------------------------------------------------------------

    def _camera(self, frame: CameraFrame) -> bool:
        if not self._is_our_camera(frame.sensor_id):
            return False
        self.frame_seq = frame.seq
        self.rec.set_time(FRAME_TIMELINE, sequence=frame.seq)
        if frame.encoding == "jpeg":
            self.image_size = (frame.width_px, frame.height_px)
            image = rr.EncodedImage(contents=frame.image.tobytes(), media_type="image/jpeg")
        else:
            self.image_size = (frame.image.shape[1], frame.image.shape[0])
            image = rr.Image(frame.image, color_model=_COLOR_MODELS[frame.encoding])
        self.rec.log("camera/image", image)
        return True

    def _calibration(self, calib: Calibration) -> bool:
        if not np.any(calib.intrinsics):
            return False  # not a camera; the radar is the reference frame
        if not self._is_our_camera(calib.sensor_id):
            return False
        try:
            self.camera = CameraModel.from_calibration(calib)
        except CalibrationError as exc:  # keep the last good one
            self.skip("bad_calibration", str(exc))
            return False
        cam_to_ref = self.camera.cam_to_ref
        self.rec.log(
            "world/ego/camera",
            rr.Transform3D(translation=cam_to_ref[:3, 3], mat3x3=cam_to_ref[:3, :3]),
            rr.Pinhole(
                image_from_camera=self.camera.K,
                resolution=[self.camera.width_px, self.camera.height_px],
                camera_xyz=rr.ViewCoordinates.RDF,
                image_plane_distance=FRUSTUM_LENGTH_M,
            ),
        )
        return True

    def _radar(self, scan: RadarScan) -> bool:
        points = scan.points
        xyz = np.stack([points["x"], points["y"], points["z"]], axis=1).astype(np.float64)
        finite = np.all(np.isfinite(xyz), axis=1)
        xyz, colors = xyz[finite], velocity_colors(points["v_r"][finite])
        self.rec.log("world/ego/radar", rr.Points3D(xyz, colors=colors, radii=RADAR_RADIUS_M))
        camera = self._projection()
        if camera is not None:
            uv, _ = camera.project(xyz)
            inside = camera.in_image(uv)
            self.rec.log(
                "camera/image/radar",
                rr.Points2D(uv[inside], colors=colors[inside], radii=RADAR_RADIUS_PX),
            )
        self.rec.log("counters/radar_points", rr.Scalars(len(xyz)))
        return True

    def _detections(self, det: Detections, log_time_ns: int) -> bool:
        self.rec.set_time(FRAME_TIMELINE, sequence=det.source_seqs.get("camera", self.frame_seq))
        objects = det.objects[det.objects["score"] >= self.min_score]
        labels = [
            f"{class_name(c)} {s:.2f}"
            for c, s in zip(objects["class_id"], objects["score"], strict=True)
        ]
        self._boxes("detections", objects, labels, colors=None)
        for key, value in det.health.items():
            if np.isfinite(value):
                self.rec.log(f"health/{key}", rr.Scalars(float(value)))
        # On another clock than the trace's (a lock-step replay put back on its recording's
        # clock), only the stages between two trace stamps are timed.
        stages = stage_latencies_ms(det.trace, det.capture_ns, log_time_ns, clock=det.clock)
        for stage, ms in stages.items():
            self.rec.log(stage_entity(stage), rr.Scalars(ms))
        self.budget_misses += det.budget_miss
        self.invalid_outputs += not det.valid
        self.rec.log("counters/objects/detected", rr.Scalars(len(objects)))
        self.rec.log("counters/budget_misses", rr.Scalars(self.budget_misses))
        self.rec.log("counters/invalid_outputs", rr.Scalars(self.invalid_outputs))
        return True

    def _ground_truth(self, gt: GroundTruth) -> bool:
        boxes = gt.boxes
        labels = [
            f"{class_name(c)} #{t}"
            for c, t in zip(boxes["class_id"], boxes["track_id"], strict=True)
        ]
        self._boxes("ground_truth", boxes, labels, colors=GT_COLOR)
        self.rec.log("counters/objects/true", rr.Scalars(len(boxes)))
        return True

    def _boxes(
        self,
        name: str,
        boxes: np.ndarray,
        labels: list[str],
        colors: tuple[int, int, int] | None,
    ) -> None:
        """Log `boxes` (DETECTION_DTYPE or GT_BOX_DTYPE) in 3D and, where a camera is known,
        around their projections in the image."""
        half_yaw = boxes["yaw"].astype(np.float64) / 2
        zeros = np.zeros_like(half_yaw)
        self.rec.log(
            f"world/ego/{name}",
            rr.Boxes3D(
                centers=np.stack([boxes["x"], boxes["y"], boxes["z"]], axis=1),
                half_sizes=np.stack([boxes["l"], boxes["w"], boxes["h"]], axis=1) / 2,
                quaternions=np.stack([zeros, zeros, np.sin(half_yaw), np.cos(half_yaw)], axis=1),
                class_ids=boxes["class_id"],
                labels=labels,
                colors=colors,
                show_labels=False,
            ),
        )
        camera = self._projection()
        if camera is None:
            return
        mins, sizes, shown = image_boxes(camera, boxes)
        self.rec.log(
            f"camera/image/{name}",
            rr.Boxes2D(
                mins=mins,
                sizes=sizes,
                class_ids=boxes["class_id"][shown],
                labels=[label for label, s in zip(labels, shown, strict=True) if s],
                colors=colors,
                show_labels=colors is None,
            ),
        )

    def _ego(self, ego: EgoMotion) -> bool:
        self.rec.log(
            "world/ego",
            rr.Transform3D(
                translation=[ego.x_m, ego.y_m, 0.0],
                rotation=rr.RotationAxisAngle(axis=[0.0, 0.0, 1.0], radians=ego.yaw_rad),
            ),
        )
        here = np.array([ego.x_m, ego.y_m, 0.0])
        if not self._path or np.linalg.norm(here - self._path[-1]) >= EGO_PATH_STEP_M:
            self._path.append(here)
            del self._path[:-EGO_PATH_MAX_VERTICES]
        due = self._path_logged_ns is None or (
            ego.capture_ns - self._path_logged_ns >= EGO_PATH_PERIOD_NS
        )
        if due and len(self._path) >= 2:
            self.rec.log("world/ego_path", rr.LineStrips3D([np.array(self._path)]))
            self._path_logged_ns = ego.capture_ns
        return True


def image_boxes(
    camera: CameraModel, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image rectangles around the projected 3D `boxes`: ``(mins, sizes, shown)``, (M, 2)
    pixels each for the M boxes of mask `shown` (N,), those wholly in front of the camera whose
    rectangle, clipped to the image, is not empty."""
    mins, sizes, shown = [], [], np.zeros(len(boxes), bool)
    limit = np.array([camera.width_px, camera.height_px], np.float64)
    for i, box in enumerate(boxes):
        uv = camera.project_box(box)
        if uv is None:
            continue
        lo, hi = np.clip(uv.min(axis=0), 0, limit), np.clip(uv.max(axis=0), 0, limit)
        if np.all(hi > lo):
            mins.append(lo)
            sizes.append(hi - lo)
            shown[i] = True
    return np.reshape(mins, (-1, 2)), np.reshape(sizes, (-1, 2)), shown


# -- fusion export rerun ---------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """``fusion export rerun FILE -o OUT.rrd`` takes no options of its own."""


def export_recording(
    path: str | os.PathLike[str], output: str | os.PathLike[str], min_score: float = 0.0
) -> RerunLogger:
    """Write the viewable topics of recording `path` to the Rerun file `output` (with the
    default `blueprint`); returns the logger, whose counters say what was logged and skipped.

    Raises `RecordingError` for a file that cannot be read as a recording; a damaged one
    (`CorruptRecordingError`) is raised after every intact chunk was exported and the file
    written, so what could be read is kept."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with RecordingReader(path) as reader:
        rec = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid4())
        rec.set_log_time_enabled(False)  # the export's wall clock says nothing about the drive
        try:
            rec.save(output, default_blueprint=blueprint())
        except Exception as exc:  # the SDK raises plain exceptions for an unwritable path
            raise RecordingError(f"cannot write {output}: {exc}") from exc
        rec.send_recording_name(Path(path).stem)
        logger = RerunLogger(rec, min_score)
        try:
            for record in reader.messages(topics=LIVE_TOPICS):
                try:
                    msg = record.decode()
                except DecodeError as exc:
                    logger.skip(f"decode_{exc.reason}", f"{record.topic}: {exc}")
                    continue
                logger.log(record.topic, msg, record.log_time_ns)
        finally:
            rec.flush()
            rec.disconnect()
    return logger


def export(args: argparse.Namespace) -> int:
    logger = export_recording(args.file, args.output, args.min_score)
    log.info(
        "wrote %s: %s%s",
        args.output,
        ", ".join(f"{n} {t}" for t, n in sorted(logger.logged.items())) or "nothing",
        f"; skipped {dict(logger.skipped)}" if logger.skipped else "",
    )
    return 0


# -- fusion view --rerun ---------------------------------------------------------------------


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rerun-web-port",
        type=int,
        default=None,
        metavar="PORT",
        help="Rerun: also serve Rerun's web viewer on this port (on --host) for a browser",
    )


def grpc_url(host: str, port: int) -> str:
    """The address a Rerun viewer connects to for a gRPC proxy at `host`:`port`."""
    return f"rerun+http://{host}:{port}/proxy"


def web_viewer_url(host: str, web_port: int, connect_to: str) -> str:
    """The address of Rerun's web viewer at `host`:`web_port`, opening `connect_to` (a gRPC
    proxy or an ``.rrd`` URL)."""
    return f"http://{host}:{web_port}/?url={urllib.parse.quote(connect_to, safe='')}"


def rerun_program() -> str:
    """The ``rerun`` program of the installed ``rerun-sdk``: its native binary. (The ``rerun``
    script beside Python is a wrapper that runs the binary as its child; terminating the
    wrapper would leave the binary serving, and spinning, after we stop.)"""
    try:
        import rerun_cli

        binary = Path(rerun_cli.__file__).with_name("rerun")
    except ImportError:
        binary = None
    if binary is not None and binary.exists():
        return str(binary)
    beside = Path(sys.executable).with_name("rerun")
    found = str(beside) if beside.exists() else shutil.which("rerun")
    if found is None:
        raise FusionError(
            "the `rerun` program of rerun-sdk is not installed: pip install rerun-sdk"
        )
    return found


def start_web_viewer(host: str, web_port: int, connect_to: str) -> subprocess.Popen:
    """Start Rerun's web viewer (``rerun --serve-web``, which binds `host`, unlike the SDK's
    ``serve_web_viewer``, which binds every interface) showing `connect_to`; returns once it
    listens. The caller terminates it."""
    proc = subprocess.Popen(
        [
            rerun_program(),
            "--serve-web",
            "--bind",
            host,
            "--web-viewer-port",
            f"{web_port}",
            connect_to,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + WEB_VIEWER_START_S
    while not listening(host, web_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise FusionError(
                f"Rerun's web viewer did not start on {host}:{web_port} within "
                f"{WEB_VIEWER_START_S:g} s (exit {proc.poll()}); is the port taken?"
            )
        time.sleep(0.1)
    return proc


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at `host`:`port`."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def view(args: argparse.Namespace, shutdown: node.ShutdownFlag | None = None) -> int:
    """Serve the running graph to Rerun until SIGINT/SIGTERM (or `shutdown` is set), or for
    ``--duration-s``."""
    port = args.port or DEFAULT_GRPC_PORT
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid4())
    try:
        rec.set_sinks(rr.GrpcServerSink(bind_ip=args.host, port=port))
    except Exception as exc:  # the SDK raises plain exceptions for a taken port
        raise FusionError(f"cannot serve Rerun on {args.host}:{port}: {exc}") from exc
    rec.send_blueprint(blueprint())
    rec.send_recording_name("live")
    url = grpc_url(args.host, port)
    log.info("Rerun: serving the graph at %s; open it with `rerun %s`", url, url)
    source = LiveSource(overrides=node.endpoint_overrides(args))
    web = None
    try:
        if args.rerun_web_port:
            web = start_web_viewer(args.host, args.rerun_web_port, url)
            log.info("Rerun: web viewer at %s", web_viewer_url(args.host, args.rerun_web_port, url))
        run_live(rec, source, args.duration_s, args.stats_period_s, shutdown, args.min_score)
    finally:
        source.close()
        if web is not None:
            web.terminate()
            web.wait()
        rec.flush()
        rec.disconnect()
    return 0


def run_live(
    rec: rr.RecordingStream,
    source: LiveSource,
    duration_s: float,
    stats_period_s: float,
    shutdown: node.ShutdownFlag | None = None,
    min_score: float = 0.0,
) -> RerunLogger:
    """Log what `source` delivers to `rec` until SIGINT/SIGTERM or `duration_s` (0: never),
    with the subscribers' counters under ``counters/inputs/<topic>/<counter>`` every
    `LIVE_COUNTERS_PERIOD_S`."""
    logger = RerunLogger(rec, min_score)
    if shutdown is None:  # not `or`: a flag that is not set is false
        shutdown = node.ShutdownFlag()
    stats = node.StatsLine(
        "view rerun",
        stats_period_s,
        lambda: (
            f"logged {dict(logger.logged)}, skipped {dict(logger.skipped)}"
            + (f"; inputs: {p}" if (p := source.problems()) else "")
        ),
    )
    end_s = time.monotonic() + duration_s if duration_s > 0 else float("inf")
    next_counters_s = time.monotonic()
    while not shutdown and time.monotonic() < end_s:
        for topic, msg, received_ns in source.poll(50):
            logger.log(topic, msg, received_ns)
        if time.monotonic() >= next_counters_s and logger.logged:
            next_counters_s = time.monotonic() + LIVE_COUNTERS_PERIOD_S
            for topic, counts in source.counters().items():
                for name, value in counts.items():
                    if isinstance(value, int):
                        rec.log(f"counters/inputs/{topic}/{name}", rr.Scalars(value))
        stats.tick()
    return logger
