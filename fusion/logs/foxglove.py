"""Our messages in Foxglove's well-known schemas, and view channels that hold them in a recording.

Foxglove decodes protobuf, JSON, FlatBuffers, ROS 1 and CDR, not our msgpack wire format, so
`FoxgloveConverter` turns each message into Foxglove messages (protobuf bytes of
`foxglove.messages` types, JSON for plots) and `FoxgloveChannels` writes them as view channels
beside the msgpack ones (`RecordingWriter.write_view`). The recorder (``fusion record
--foxglove``), the export (``fusion export foxglove``) and the live view (``fusion view
--foxglove``) all use the same converter, so the three show the same thing:

| topic | schema | frame id | what it shows |
|---|---|---|---|
| ``/camera/image`` | ``CompressedImage`` | camera's | JPEG frames, the bytes as they are |
| ``/camera/image_raw`` | ``RawImage`` | camera's | bgr8 / rgb8 / mono8 frames |
| ``/camera/calibration`` | ``CameraCalibration`` | camera's | a camera's `Calibration` |
| ``/radar/points`` | ``PointCloud`` | radar's | `RadarScan`: x y z v_r rcs dt_s |
| ``/detections/scene`` | ``SceneUpdate`` | ``ego`` | `Detections`: a cube, a label each |
| ``/ground_truth/scene`` | ``SceneUpdate`` | ``ego`` | `GroundTruth`: the same |
| ``/tf`` | ``FrameTransform`` | - | ``ego`` -> each sensor, ``world`` -> ``ego`` |
| ``/fusion/latency`` | JSON ``fusion.Latency`` | - | per-stage ms of each `Detections` |
| ``/fusion/health`` | JSON ``fusion.Health`` | - | health score, mode, counters |

(Schemas are ``foxglove.<name>``, protobuf; a sensor's frame id is its ``sensor_id``.)

Frames: ``ego`` is the reference frame, which is the radar's (x forward, y left, z up); each
sensor's frame is named by its ``sensor_id`` and placed by its `Calibration` (``sensor_to_ref``);
``world`` is the drive's world frame, ``world -> ego`` the `EgoMotion` pose (planar). Message
timestamps are capture times (``capture_ns``, on the message's own clock); where written to a
file, the MCAP log time is the log time of the msgpack record, so both line up.

A message that cannot be converted (a value Foxglove's types cannot hold, such as a negative
stamp) is counted by reason in `FoxgloveConverter.skipped`, logged (rate-limited) and left out;
it never stops the caller.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from foxglove import messages as fm

from fusion.core.latency import STAGES, stage_latencies_ms
from fusion.core.ratelog import RateLimitedLog
from fusion.errors import FusionError
from fusion.logs.framing import ViewSchema
from fusion.logs.writer import RecordingWriter
from fusion.perception.geometry import rotation_to_quaternion
from fusion.wire.messages import (
    DETECTION_MODES,
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

#: The reference frame (the radar's) and the drive's world frame, as Foxglove frame ids.
EGO_FRAME = "ego"
WORLD_FRAME = "world"
#: Frame ids of sensors whose message names none (an empty ``sensor_id``).
DEFAULT_CAMERA_FRAME = "camera"
DEFAULT_RADAR_FRAME = "radar"

IMAGE_TOPIC = "/camera/image"
RAW_IMAGE_TOPIC = "/camera/image_raw"
CAMERA_CALIBRATION_TOPIC = "/camera/calibration"
RADAR_TOPIC = "/radar/points"
DETECTIONS_TOPIC = "/detections/scene"
GROUND_TRUTH_TOPIC = "/ground_truth/scene"
TF_TOPIC = "/tf"
LATENCY_TOPIC = "/fusion/latency"
HEALTH_TOPIC = "/fusion/health"

#: Label height above a box's top (m) and its size on screen (px).
LABEL_LIFT_M = 0.4
LABEL_FONT_PX = 14.0
#: Box colours (r, g, b) by class id into `CLASS_NAMES`; opacity of detections and ground truth.
CLASS_RGB = ((0.2, 0.5, 1.0), (1.0, 0.6, 0.1), (1.0, 0.2, 0.2), (0.2, 0.9, 0.3))
UNKNOWN_CLASS_RGB = (0.7, 0.7, 0.7)
DETECTION_ALPHA = 0.45
GROUND_TRUTH_ALPHA = 0.15
#: Raw image encodings Foxglove's RawImage takes as ours are named, and their bytes per pixel.
RAW_ENCODINGS = {"bgr8": 3, "rgb8": 3, "mono8": 1}
#: numpy field type -> Foxglove's packed field type (the radar points' fields are all f4).
_NUMERIC_TYPES = {
    np.dtype("<f4"): fm.PackedElementFieldNumericType.Float32,
    np.dtype("<f8"): fm.PackedElementFieldNumericType.Float64,
    np.dtype("u1"): fm.PackedElementFieldNumericType.Uint8,
    np.dtype("i1"): fm.PackedElementFieldNumericType.Int8,
    np.dtype("<u2"): fm.PackedElementFieldNumericType.Uint16,
    np.dtype("<i2"): fm.PackedElementFieldNumericType.Int16,
    np.dtype("<u4"): fm.PackedElementFieldNumericType.Uint32,
    np.dtype("<i4"): fm.PackedElementFieldNumericType.Int32,
}
#: What a conversion may raise for a message that decoded but that Foxglove's types cannot hold.
_UNCONVERTIBLE = (FusionError, ValueError, TypeError, OverflowError)


def _protobuf(cls: type) -> ViewSchema:
    schema = cls.get_schema()
    return ViewSchema(schema.name, schema.encoding, bytes(schema.data), "protobuf")


def stage_key(name: str) -> str:
    """A latency stage's JSON key: ``capture -> detections`` -> ``capture_to_detections_ms``."""
    return name.replace(" -> ", "_to_").replace(" ", "_") + "_ms"


#: Counters of the health channel (cumulative over the outputs seen), besides one per mode.
HEALTH_COUNTERS = ("outputs", "invalid", "budget_misses")


def _json_schema(name: str, properties: dict[str, str]) -> ViewSchema:
    doc = {
        "title": name,
        "type": "object",
        "properties": {key: {"type": kind} for key, kind in properties.items()},
    }
    return ViewSchema(name, "jsonschema", json.dumps(doc, sort_keys=True).encode(), "json")


COMPRESSED_IMAGE_SCHEMA = _protobuf(fm.CompressedImage)
RAW_IMAGE_SCHEMA = _protobuf(fm.RawImage)
CAMERA_CALIBRATION_SCHEMA = _protobuf(fm.CameraCalibration)
POINT_CLOUD_SCHEMA = _protobuf(fm.PointCloud)
SCENE_UPDATE_SCHEMA = _protobuf(fm.SceneUpdate)
FRAME_TRANSFORM_SCHEMA = _protobuf(fm.FrameTransform)
LATENCY_SCHEMA = _json_schema(
    "fusion.Latency",
    {"camera_seq": "integer", "mode": "string", **{stage_key(n): "number" for n, *_ in STAGES}},
)
HEALTH_SCHEMA = _json_schema(
    "fusion.Health",
    {
        "score": "number",
        "recon": "number",
        "kl": "number",
        "valid": "integer",
        "budget_miss": "integer",
        "objects": "integer",
        "mode": "string",
        **{key: "integer" for key in (*HEALTH_COUNTERS, *DETECTION_MODES)},
    },
)
#: Every Foxglove channel a converter may produce: topic -> schema.
CHANNELS: dict[str, ViewSchema] = {
    IMAGE_TOPIC: COMPRESSED_IMAGE_SCHEMA,
    RAW_IMAGE_TOPIC: RAW_IMAGE_SCHEMA,
    CAMERA_CALIBRATION_TOPIC: CAMERA_CALIBRATION_SCHEMA,
    RADAR_TOPIC: POINT_CLOUD_SCHEMA,
    DETECTIONS_TOPIC: SCENE_UPDATE_SCHEMA,
    GROUND_TRUTH_TOPIC: SCENE_UPDATE_SCHEMA,
    TF_TOPIC: FRAME_TRANSFORM_SCHEMA,
    LATENCY_TOPIC: LATENCY_SCHEMA,
    HEALTH_TOPIC: HEALTH_SCHEMA,
}


@dataclass(frozen=True)
class FoxgloveMessage:
    """One message for a Foxglove channel: its topic, schema and encoded bytes."""

    topic: str
    schema: ViewSchema
    data: bytes


def timestamp(ns: int) -> fm.Timestamp:
    """A Foxglove timestamp; `OverflowError` for a negative one or one past 2106."""
    if ns < 0:
        raise OverflowError(f"a stamp of {ns} ns is before the epoch")
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return fm.Timestamp(sec, nsec)


def _yaw_quaternion(yaw_rad: float) -> fm.Quaternion:
    return fm.Quaternion(x=0.0, y=0.0, z=math.sin(yaw_rad / 2), w=math.cos(yaw_rad / 2))


def _color(class_id: int, alpha: float) -> fm.Color:
    r, g, b = CLASS_RGB[class_id] if 0 <= class_id < len(CLASS_RGB) else UNKNOWN_CLASS_RGB
    return fm.Color(r=r, g=g, b=b, a=alpha)


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: Foxglove's JSON decoder refuses them."""
    value = float(value)
    return value if math.isfinite(value) else None


def _box_entity(
    box: np.void, entity_id: str, stamp: fm.Timestamp, label: str, alpha: float
) -> fm.SceneEntity:
    """One box (a row of `DETECTION_DTYPE` or `GT_BOX_DTYPE`) as an entity: a cube, a label."""
    class_id = int(box["class_id"])
    x, y, z = float(box["x"]), float(box["y"]), float(box["z"])
    l_m, w_m, h_m = float(box["l"]), float(box["w"]), float(box["h"])
    cube = fm.CubePrimitive(
        pose=fm.Pose(position=fm.Vector3(x=x, y=y, z=z), orientation=_yaw_quaternion(box["yaw"])),
        size=fm.Vector3(x=l_m, y=w_m, z=h_m),
        color=_color(class_id, alpha),
    )
    text = fm.TextPrimitive(
        pose=fm.Pose(
            position=fm.Vector3(x=x, y=y, z=z + h_m / 2 + LABEL_LIFT_M),
            orientation=fm.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0),
        ),
        billboard=True,
        font_size=LABEL_FONT_PX,
        scale_invariant=True,
        color=fm.Color(r=1.0, g=1.0, b=1.0, a=1.0),
        text=label,
    )
    speed = math.hypot(float(box["vx"]), float(box["vy"]))
    return fm.SceneEntity(
        timestamp=stamp,
        frame_id=EGO_FRAME,
        id=entity_id,
        metadata=[
            fm.KeyValuePair(key="class", value=class_name(class_id)),
            fm.KeyValuePair(key="speed_mps", value=f"{speed:.2f}"),
        ],
        cubes=[cube],
        texts=[text],
    )


def _scene(entities: list[fm.SceneEntity], stamp: fm.Timestamp) -> bytes:
    """A scene update that first removes this topic's earlier entities (the previous frame's
    boxes: a frame with fewer objects must not leave old ones standing), then adds `entities`."""
    clear = fm.SceneEntityDeletion(timestamp=stamp, type=fm.SceneEntityDeletionType.All)
    return fm.SceneUpdate(deletions=[clear], entities=entities).encode()


class FoxgloveConverter:
    """Turns our messages into `FoxgloveMessage`s (see the module docstring for the channels).

    Stateful only for the health channel's counters (cumulative over the `Detections` seen) and
    the counts of what it skipped, by reason (`skipped`). Detections scoring under `min_score`
    get no cube (a recording keeps them all: 0 by default; the views' commands pass 0.3)."""

    def __init__(self, min_score: float = 0.0) -> None:
        self.min_score = min_score
        self.counters: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self._log = RateLimitedLog(log)

    def convert(self, topic: str, msg: Message, log_time_ns: int) -> list[FoxgloveMessage]:
        """The Foxglove messages for `msg` (received on `topic` at `log_time_ns`, on the clock of
        its trace, which is what the latency's last stages are measured to); an empty list for a
        message type with no view (`ReplayControl`) or one that cannot be converted (counted,
        logged)."""
        try:
            return list(self._convert(msg, log_time_ns))
        except _UNCONVERTIBLE as exc:
            reason = f"{topic}: {type(exc).__name__}"
            self.skipped[reason] += 1
            self._log.warning(reason, f"cannot show a {type(msg).__name__} on {topic!r}: {exc}")
            return []

    def _convert(self, msg: Message, log_time_ns: int) -> Iterable[FoxgloveMessage]:
        if isinstance(msg, CameraFrame):
            yield self._image(msg)
        elif isinstance(msg, RadarScan):
            yield self._points(msg)
        elif isinstance(msg, Detections):
            yield from self._detections(msg, log_time_ns)
        elif isinstance(msg, GroundTruth):
            yield self._ground_truth(msg)
        elif isinstance(msg, Calibration):
            yield from self._calibration(msg)
        elif isinstance(msg, EgoMotion):
            yield self._ego(msg)

    @staticmethod
    def _image(frame: CameraFrame) -> FoxgloveMessage:
        stamp, frame_id = timestamp(frame.capture_ns), frame.sensor_id or DEFAULT_CAMERA_FRAME
        if frame.encoding == "jpeg":
            image = fm.CompressedImage(
                timestamp=stamp, frame_id=frame_id, data=frame.image.tobytes(), format="jpeg"
            )
            return FoxgloveMessage(IMAGE_TOPIC, COMPRESSED_IMAGE_SCHEMA, image.encode())
        height, width = frame.image.shape[:2]
        raw = fm.RawImage(
            timestamp=stamp,
            frame_id=frame_id,
            width=width,
            height=height,
            encoding=frame.encoding,
            step=width * RAW_ENCODINGS[frame.encoding],
            data=frame.image.tobytes(),
        )
        return FoxgloveMessage(RAW_IMAGE_TOPIC, RAW_IMAGE_SCHEMA, raw.encode())

    @staticmethod
    def _points(scan: RadarScan) -> FoxgloveMessage:
        points = scan.points
        fields = [
            fm.PackedElementField(
                name=name, offset=offset, type=_NUMERIC_TYPES[points.dtype.fields[name][0]]
            )
            for name, (_, offset) in points.dtype.fields.items()
        ]
        cloud = fm.PointCloud(
            timestamp=timestamp(scan.capture_ns),
            frame_id=scan.sensor_id or DEFAULT_RADAR_FRAME,
            point_stride=points.dtype.itemsize,
            fields=fields,
            data=points.tobytes(),
        )
        return FoxgloveMessage(RADAR_TOPIC, POINT_CLOUD_SCHEMA, cloud.encode())

    def _detections(self, det: Detections, log_time_ns: int) -> Iterable[FoxgloveMessage]:
        stamp = timestamp(det.capture_ns)
        entities = [
            _box_entity(
                box,
                f"det{i}",
                stamp,
                f"{class_name(int(box['class_id']))} {float(box['score']):.2f}",
                DETECTION_ALPHA,
            )
            for i, box in enumerate(det.objects)
            if box["score"] >= self.min_score
        ]
        yield FoxgloveMessage(DETECTIONS_TOPIC, SCENE_UPDATE_SCHEMA, _scene(entities, stamp))
        self.counters["outputs"] += 1
        self.counters["invalid"] += not det.valid
        self.counters["budget_misses"] += det.budget_miss
        self.counters[det.mode] += 1
        health = {
            **{k: _finite_or_none(v) for k, v in det.health.items()},
            "valid": int(det.valid),
            "budget_miss": int(det.budget_miss),
            "objects": len(det.objects),
            "mode": det.mode,
            **{k: self.counters[k] for k in (*HEALTH_COUNTERS, *DETECTION_MODES)},
        }
        yield FoxgloveMessage(HEALTH_TOPIC, HEALTH_SCHEMA, json.dumps(health).encode())
        # On another clock than the trace's (a lock-step replay put back on its recording's
        # clock), only the stages between two trace stamps are timed.
        stages = stage_latencies_ms(det.trace, det.capture_ns, log_time_ns, clock=det.clock)
        if stages:
            latency = {
                "camera_seq": det.source_seqs.get("camera", -1),
                "mode": det.mode,
                **{stage_key(name): ms for name, ms in stages.items()},
            }
            yield FoxgloveMessage(LATENCY_TOPIC, LATENCY_SCHEMA, json.dumps(latency).encode())

    @staticmethod
    def _ground_truth(gt: GroundTruth) -> FoxgloveMessage:
        stamp = timestamp(gt.capture_ns)
        entities = [
            _box_entity(
                box,
                f"gt{int(box['track_id'])}",
                stamp,
                f"{class_name(int(box['class_id']))} #{int(box['track_id'])}",
                GROUND_TRUTH_ALPHA,
            )
            for box in gt.boxes
        ]
        return FoxgloveMessage(GROUND_TRUTH_TOPIC, SCENE_UPDATE_SCHEMA, _scene(entities, stamp))

    @staticmethod
    def _calibration(calib: Calibration) -> Iterable[FoxgloveMessage]:
        stamp = timestamp(calib.capture_ns)
        is_camera = calib.width_px > 0 and bool(np.any(calib.intrinsics))
        frame_id = calib.sensor_id or (DEFAULT_CAMERA_FRAME if is_camera else DEFAULT_RADAR_FRAME)
        sensor_to_ref = np.asarray(calib.sensor_to_ref, dtype=np.float64)
        w, x, y, z = rotation_to_quaternion(sensor_to_ref[:3, :3])
        tx, ty, tz = (float(v) for v in sensor_to_ref[:3, 3])
        transform = fm.FrameTransform(
            timestamp=stamp,
            parent_frame_id=EGO_FRAME,
            child_frame_id=frame_id,
            translation=fm.Vector3(x=tx, y=ty, z=tz),
            rotation=fm.Quaternion(x=x, y=y, z=z, w=w),
        )
        yield FoxgloveMessage(TF_TOPIC, FRAME_TRANSFORM_SCHEMA, transform.encode())
        if is_camera:
            K = np.asarray(calib.intrinsics, dtype=np.float64)
            distortion = [float(v) for v in calib.distortion]
            projection = np.hstack([K, np.zeros((3, 1))])
            camera = fm.CameraCalibration(
                timestamp=stamp,
                frame_id=frame_id,
                width=int(calib.width_px),
                height=int(calib.height_px),
                # OpenCV's 5 (or 8) coefficients are ROS's plumb_bob (rational_polynomial).
                distortion_model="rational_polynomial" if len(distortion) > 5 else "plumb_bob",
                D=distortion,
                K=K.ravel().tolist(),
                R=np.eye(3).ravel().tolist(),
                P=projection.ravel().tolist(),
            )
            yield FoxgloveMessage(
                CAMERA_CALIBRATION_TOPIC, CAMERA_CALIBRATION_SCHEMA, camera.encode()
            )

    @staticmethod
    def _ego(ego: EgoMotion) -> FoxgloveMessage:
        transform = fm.FrameTransform(
            timestamp=timestamp(ego.capture_ns),
            parent_frame_id=WORLD_FRAME,
            child_frame_id=EGO_FRAME,
            translation=fm.Vector3(x=float(ego.x_m), y=float(ego.y_m), z=0.0),
            rotation=_yaw_quaternion(float(ego.yaw_rad)),
        )
        return FoxgloveMessage(TF_TOPIC, FRAME_TRANSFORM_SCHEMA, transform.encode())


class FoxgloveChannels:
    """Writes the Foxglove view of each message to a `RecordingWriter`, beside (or instead of)
    the msgpack channels: the MCAP log time is the msgpack record's, the publish time its
    ``capture_ns``."""

    def __init__(self, writer: RecordingWriter, converter: FoxgloveConverter | None = None):
        self.writer = writer
        self.converter = converter or FoxgloveConverter()

    def write(self, topic: str, msg: Message, log_time_ns: int) -> int:
        """Convert `msg` and write its Foxglove messages; how many were written."""
        out = self.converter.convert(topic, msg, log_time_ns)
        for view in out:
            self.writer.write_view(
                view.topic, view.schema, view.data, log_time_ns, msg.capture_ns, sequence=msg.seq
            )
        return len(out)
