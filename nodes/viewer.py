"""Viewer node: draws detections and radar points over the camera and in a bird's-eye view.

For every `Detections` message it finds the camera frame it was made from (by
``source_seqs["camera"]``), draws the boxes, the latest radar scan and a BEV panel, and writes the
picture to an MP4 video (and every Nth to a PNG). It never slows the pipeline: it subscribes like
any other node, and when it falls behind its queues drop (counted) rather than back-pressure.

    python -m nodes.viewer -o out/annotated.mp4 --width 960
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter, OrderedDict
from pathlib import Path

import cv2
import numpy as np

from fusion import viz
from fusion.core.ratelog import RateLimitedLog
from fusion.errors import CalibrationError, ImageError
from fusion.perception.geometry import CameraModel
from fusion.perception.image import camera_image
from fusion.runtime import node
from fusion.runtime.transport import Subscriber
from fusion.wire import services, validate
from fusion.wire.messages import CameraFrame, Detections

log = logging.getLogger("viewer")
CAMERA_BUFFER = 64  # frames kept to match late detections


class Viewer:
    """Keeps recent inputs and renders one picture per detections message."""

    def __init__(
        self, width_px: int, sensor_id: str = "camera_front", min_score: float = 0.0
    ) -> None:
        self.width_px = width_px
        self.min_score = min_score
        self.sensor_id = sensor_id
        self.frames: OrderedDict[int, CameraFrame] = OrderedDict()
        self.camera: CameraModel | None = None
        self.radar_points: np.ndarray | None = None
        self.unmatched = 0
        self.unreadable = 0  # frames whose image could not be read
        self.rejected: Counter[str] = Counter()  # inputs that cannot be trusted, by reason
        self._log = RateLimitedLog(log)

    def update(self, topic: str, msg) -> np.ndarray | None:
        rejection = validate.problem(msg, check_stamps=False)  # it draws, it does not sync
        if rejection is not None:
            self.rejected[rejection.reason] += 1
            self._log.warning(rejection.reason, rejection.message)
            return None
        if topic == "camera":
            self.frames[msg.seq] = msg
            while len(self.frames) > CAMERA_BUFFER:
                self.frames.popitem(last=False)
        elif topic == "radar":
            self.radar_points = msg.points
        elif topic == "calibration" and msg.sensor_id == self.sensor_id:
            try:
                self.camera = CameraModel.from_calibration(msg)
            except CalibrationError as exc:  # not a camera: keep the last good one
                self.rejected["bad_calibration"] += 1
                self._log.warning("bad_calibration", str(exc))
        elif topic == "detections":
            return self.render(msg)
        return None

    def render(self, det: Detections) -> np.ndarray | None:
        frame = self.frames.get(det.source_seqs.get("camera", -1))
        if self.camera is None:
            return None
        height_px = round(self.width_px * self.camera.height_px / self.camera.width_px)
        if frame is None:
            if det.mode != "radar_only":
                self.unmatched += 1
                return None
            image = np.zeros((height_px, self.width_px, 3), np.uint8)
        else:
            try:
                image = camera_image(frame, (self.width_px, height_px))
            except ImageError:
                self.unreadable += 1
                return None
        image = cv2.resize(image, (self.width_px, height_px), interpolation=cv2.INTER_AREA)
        objects = det.objects[det.objects["score"] >= self.min_score]
        latency_ms = (det.trace.get("decoded", det.capture_ns) - det.capture_ns) / 1e6
        header = (
            f"#{det.seq} {det.mode}  {len(objects)} objects  "
            f"latency {latency_ms:.0f} ms  health {det.health.get('score', float('nan')):.2f}"
            + ("  BUDGET MISS" if det.budget_miss else "")
            + ("  SENSOR HEALTH FLAGGED" if det.health.get("ok", 1.0) == 0.0 else "")
        )
        view = viz.draw_camera(image, self.camera, objects, self.radar_points, header=header)
        bev = viz.draw_bev(400, objects, self.radar_points)
        return viz.compose(view, bev)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="out/annotated.mp4", help="MP4 video to write")
    parser.add_argument("--width", type=int, default=960, help="width of the camera panel (px)")
    parser.add_argument(
        "--png-every", type=int, default=0, help="also save every Nth picture as PNG"
    )
    parser.add_argument(
        "--min-score", type=float, default=0.3, help="draw detections from this score up"
    )
    node.add_common_arguments(parser)
    args = parser.parse_args(argv)
    node.setup_logging(args.log_level)
    overrides = node.endpoint_overrides(args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    topics = ("calibration", "radar", "camera", "detections")
    subs = {
        t: Subscriber(t, services.endpoint(t, overrides), latest_only=t == "radar", queue_size=200)
        for t in topics
    }
    inputs = node.Inputs(subs)
    viewer = Viewer(args.width, min_score=args.min_score)
    sink = viz.VideoSink(args.output, fps=services.service("camera").rate_hz)
    shutdown = node.ShutdownFlag()
    stats = node.StatsLine(
        "viewer",
        args.stats_period_s,
        lambda: f"{sink.frames} pictures" + (f"; inputs: {p}" if (p := inputs.problems()) else ""),
    )
    try:
        while not shutdown:
            got = inputs.poll(50)
            for topic in topics:
                for msg in got.get(topic, ()):
                    picture = viewer.update(topic, msg)
                    if picture is None:
                        continue
                    sink.write(picture)
                    if args.png_every and sink.frames % args.png_every == 1:
                        stem = Path(args.output).with_suffix("")
                        cv2.imwrite(f"{stem}_{sink.frames:05d}.png", picture)
            stats.tick()
    finally:
        sink.close()
        inputs.close()
    log.info(
        "viewer: %d pictures to %s (%d detections without their frame, %d unreadable frames, "
        "rejected %s)",
        sink.frames,
        args.output,
        viewer.unmatched,
        viewer.unreadable,
        dict(viewer.rejected),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
