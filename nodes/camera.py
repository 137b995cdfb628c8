"""Camera producer node: publishes `CameraFrame`s and the camera's `Calibration`.

Sources: ``device:N`` (a V4L2 camera, stamped at capture), ``video:PATH``, ``folder:DIR`` (images
at ``--rate-hz``), ``sim:SCENARIO[:SEED]`` (the simulator's camera), ``recording:FILE`` (the
camera topics of a recording). File, folder, simulated and recorded frames are released at their
own timing and restamped onto this host's monotonic clock. A calibration is republished every
second for late subscribers; devices, videos and folders take it from ``--calibration FILE.json``
(keys ``K``, ``width_px``, ``height_px``, optional ``sensor_to_ref`` 4x4 and ``distortion``).

    python -m nodes.camera --source sim:city:1
    python -m nodes.camera --source device:0 --calibration cam.json --encoding jpeg
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from fusion.errors import ConfigError, FusionError
from fusion.runtime import node
from fusion.runtime.transport import Publisher
from fusion.sensors import producer, sources
from fusion.sensors.pacing import Pacer, paced
from fusion.wire.messages import Calibration, CameraFrame, Message
from fusion.wire.services import endpoint

log = logging.getLogger("camera")
CALIBRATION_PERIOD_NS = 1_000_000_000


def load_calibration(path: str, sensor_id: str) -> Calibration:
    try:
        raw = json.loads(Path(path).read_text())
        return Calibration(
            intrinsics=np.asarray(raw["K"], dtype="<f8").reshape(3, 3),
            sensor_to_ref=np.asarray(raw.get("sensor_to_ref", np.eye(4)), dtype="<f8").reshape(
                4, 4
            ),
            distortion=np.asarray(raw.get("distortion", []), dtype="<f8").reshape(-1),
            width_px=int(raw["width_px"]),
            height_px=int(raw["height_px"]),
            sensor_id=sensor_id,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read camera calibration {path}: {exc!r}") from exc


def source_stream(args: argparse.Namespace, pacer: Pacer) -> Iterator[tuple[str, Message]]:
    """The source's ``(topic, message)`` stream; all but a live device's are paced."""
    kind, parts = sources.parse_source(args.source)
    if kind in ("sim", "recording"):
        options = {}
        if kind == "sim":
            options = {
                "duration_s": args.duration_s,
                "width_px": args.width,
                "height_px": args.height,
                "jpeg_quality": args.jpeg_quality if args.encoding == "jpeg" else None,
                "start_s": pacer.start_offset_ns() / 1e9,  # a restart joins the drive's present
            }
        stream = sources.replayed_messages(kind, parts, {"camera", "calibration"}, **options)
        mine = ((t, m) for t, m in stream if t == "camera" or m.sensor_id == args.sensor_id)
        return paced(mine, pacer)
    if kind == "folder":
        frames = sources.camera_frames_from_folder(
            Path(parts[0]), args.rate_hz, args.sensor_id, args.encoding == "jpeg"
        )
        return paced((("camera", f) for f in frames), pacer)
    if kind in ("device", "video"):
        target = int(parts[0]) if kind == "device" else parts[0]
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            raise ConfigError(f"cannot open {kind} {parts[0]!r}")
        frames = sources.camera_frames_from_capture(capture, args.sensor_id, live=kind == "device")
        stream = (("camera", f) for f in frames)
        return stream if kind == "device" else paced(stream, pacer)
    raise ConfigError(f"the camera node cannot read a {kind} source")


def encode_for_wire(frame: CameraFrame, encoding: str, jpeg_quality: int) -> CameraFrame:
    if frame.encoding == encoding:
        return frame
    if encoding == "jpeg":
        ok, data = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise FusionError("JPEG encoding failed")
        return frame.replace(image=data.reshape(-1), encoding="jpeg")
    image = cv2.imdecode(np.asarray(frame.image), cv2.IMREAD_COLOR)
    if image is None:
        raise FusionError(f"frame {frame.seq} is not a decodable JPEG")
    return frame.replace(image=image, encoding="bgr8")


def main(argv: list[str] | None = None, camera_pub=None, calibration_pub=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensor-id", default="camera_front")
    parser.add_argument(
        "--encoding", choices=("bgr8", "jpeg"), default="bgr8", help="what goes on the wire"
    )
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--rate-hz", type=float, default=20.0, help="frame rate of a folder source")
    parser.add_argument("--width", type=int, default=1280, help="simulated image width (px)")
    parser.add_argument("--height", type=int, default=720, help="simulated image height (px)")
    parser.add_argument(
        "--calibration", help="calibration JSON for device, video and folder sources"
    )
    producer.add_arguments(
        parser,
        "device:N | video:PATH | folder:DIR | sim:SCENARIO[:SEED] | recording:FILE",
        required=True,
    )
    args = parser.parse_args(argv)
    node.setup_logging(args.log_level)
    overrides = node.endpoint_overrides(args)
    camera_pub = camera_pub or Publisher("camera", endpoint("camera", overrides))
    calibration_pub = calibration_pub or Publisher(
        "calibration", endpoint("calibration", overrides)
    )
    calibration = load_calibration(args.calibration, args.sensor_id) if args.calibration else None
    shutdown = node.ShutdownFlag()
    if args.wait_for_subscribers:
        camera_pub.wait_for_subscribers(args.wait_for_subscribers, timeout_s=30)
    sent = 0
    stats = node.StatsLine("camera", args.stats_period_s, lambda: f"{sent} frames sent")
    last_calibration_ns = -CALIBRATION_PERIOD_NS

    def send(topic: str, msg: Message) -> None:
        nonlocal calibration, sent, last_calibration_ns
        if topic == "calibration":
            calibration = msg
            return
        camera_pub.send(encode_for_wire(msg, args.encoding, args.jpeg_quality))
        sent += 1
        if (
            calibration is not None
            and msg.capture_ns - last_calibration_ns >= CALIBRATION_PERIOD_NS
        ):
            calibration.capture_ns = msg.capture_ns
            calibration_pub.send(calibration)
            last_calibration_ns = msg.capture_ns
        stats.tick()

    try:
        producer.run(args, lambda pacer: source_stream(args, pacer), send, shutdown)
    finally:
        camera_pub.close()
        calibration_pub.close()
    log.info("camera: %d frames sent%s", sent, f" ({shutdown.signal_name})" if shutdown else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
