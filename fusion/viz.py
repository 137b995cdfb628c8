"""Drawing: detections and radar points over the camera image, and a bird's-eye view.

Pure functions from arrays to images (BGR uint8), used by the viewer node and the demo. Colours
are per class (`CLASS_COLORS`); radar points are coloured by radial velocity (blue approaching,
red receding); ground truth, when given, is drawn in white.
"""

from __future__ import annotations

import cv2
import numpy as np

from fusion.perception.geometry import CameraModel, box_corners
from fusion.wire.messages import CLASS_NAMES

CLASS_COLORS = {0: (60, 200, 60), 1: (0, 160, 255), 2: (230, 80, 230), 3: (255, 200, 0)}
GT_COLOR = (255, 255, 255)
#: Box edges as corner index pairs for `fusion.perception.geometry.box_corners` order.
BOX_EDGES = [
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 0),
    (4, 5),
    (5, 6),
    (6, 7),
    (7, 4),
    (0, 4),
    (1, 5),
    (2, 6),
    (3, 7),
]


def velocity_color(v_r: float, v_max: float = 10.0) -> tuple[int, int, int]:
    t = float(np.clip((v_r + v_max) / (2 * v_max), 0.0, 1.0))
    return (int(255 * (1 - t)), 64, int(255 * t))


def draw_camera(
    image_bgr: np.ndarray,
    camera: CameraModel,
    detections: np.ndarray | None = None,
    radar_points: np.ndarray | None = None,
    ground_truth: np.ndarray | None = None,
    header: str = "",
) -> np.ndarray:
    """The camera image with projected 3D boxes and radar points. `camera` is scaled to the
    image if their sizes differ."""
    out = np.ascontiguousarray(image_bgr).copy()
    h, w = out.shape[:2]
    if (camera.width_px, camera.height_px) != (w, h):
        camera = camera.scaled(w, h)
    if radar_points is not None and len(radar_points):
        xyz = np.stack([radar_points[k] for k in ("x", "y", "z")], axis=1)
        uv, _ = camera.project(xyz)
        inside = camera.in_image(uv)
        for (u, v), v_r in zip(uv[inside], radar_points["v_r"][inside], strict=True):
            cv2.circle(out, (int(u), int(v)), 3, velocity_color(float(v_r)), -1, cv2.LINE_AA)
    for boxes, is_gt in ((ground_truth, True), (detections, False)):
        if boxes is None:
            continue
        for box in boxes:
            color = GT_COLOR if is_gt else CLASS_COLORS.get(int(box["class_id"]), (200, 200, 200))
            _draw_box(out, camera, box, color, 1 if is_gt else 2)
            if not is_gt:
                uv, _ = camera.project(np.array([[box["x"], box["y"], box["z"] + box["h"] / 2]]))
                if camera.in_image(uv)[0]:
                    name = (
                        CLASS_NAMES[int(box["class_id"])]
                        if 0 <= box["class_id"] < len(CLASS_NAMES)
                        else "?"
                    )
                    label = f"{name} {box['score']:.2f}"
                    cv2.putText(
                        out,
                        label,
                        (int(uv[0, 0]), int(uv[0, 1]) - 4),
                        cv2.FONT_HERSHEY_SIMPLEX,
                        0.4,
                        color,
                        1,
                        cv2.LINE_AA,
                    )
    if header:
        cv2.rectangle(out, (0, 0), (w, 20), (0, 0, 0), -1)
        cv2.putText(
            out, header, (6, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )
    return out


def _draw_box(
    image: np.ndarray, camera: CameraModel, box: np.ndarray, color, thickness: int
) -> None:
    uv = camera.project_box(box)
    if uv is None:
        return
    h, w = image.shape[:2]
    if np.all((uv[:, 0] < 0) | (uv[:, 0] >= w) | (uv[:, 1] < 0) | (uv[:, 1] >= h)):
        return
    pts = np.clip(uv, -10 * w, 10 * w).astype(np.int32)
    for a, b in BOX_EDGES:
        cv2.line(image, tuple(pts[a]), tuple(pts[b]), color, thickness, cv2.LINE_AA)


def draw_bev(
    size_px: int,
    detections: np.ndarray | None = None,
    radar_points: np.ndarray | None = None,
    ground_truth: np.ndarray | None = None,
    range_m: float = 60.0,
) -> np.ndarray:
    """A top view: ego at the bottom centre, x forward up the image, y to the left; a 10 m grid."""
    canvas = np.full((size_px, size_px, 3), 24, np.uint8)
    scale = size_px / range_m

    def to_px(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.stack([size_px / 2 - y * scale, size_px - x * scale], axis=-1)

    for d in range(10, int(range_m) + 1, 10):
        v = int(size_px - d * scale)
        cv2.line(canvas, (0, v), (size_px, v), (60, 60, 60), 1)
        cv2.putText(
            canvas, f"{d} m", (4, v - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (120, 120, 120), 1
        )
    if radar_points is not None and len(radar_points):
        px = to_px(radar_points["x"], radar_points["y"])
        for (u, v), v_r in zip(px, radar_points["v_r"], strict=True):
            if np.isfinite(u) and np.isfinite(v):
                cv2.circle(canvas, (int(u), int(v)), 2, velocity_color(float(v_r)), -1)
    for boxes, is_gt in ((ground_truth, True), (detections, False)):
        if boxes is None:
            continue
        for box in boxes:
            corners = box_corners(
                np.array([box["x"], box["y"], 0.0]),
                np.array([box["l"], box["w"], 0.0]),
                float(box["yaw"]),
            )[:4]
            pts = to_px(corners[:, 0], corners[:, 1])
            if not np.all(np.isfinite(pts)):
                continue
            color = GT_COLOR if is_gt else CLASS_COLORS.get(int(box["class_id"]), (200, 200, 200))
            cv2.polylines(
                canvas, [pts.astype(np.int32)], True, color, 1 if is_gt else 2, cv2.LINE_AA
            )
    cv2.drawMarker(canvas, (size_px // 2, size_px - 4), (255, 255, 255), cv2.MARKER_TRIANGLE_UP, 10)
    return canvas


def compose(camera_view: np.ndarray, bev_view: np.ndarray) -> np.ndarray:
    """Camera view and BEV side by side, the BEV scaled to the camera view's height."""
    h = camera_view.shape[0]
    bev = cv2.resize(bev_view, (h, h), interpolation=cv2.INTER_AREA)
    return np.hstack([camera_view, bev])


class VideoSink:
    """Writes frames to an MP4 (``mp4v``) file, opening it on the first frame."""

    def __init__(self, path: str, fps: float = 20.0) -> None:
        self.path, self.fps = path, fps
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            h, w = image.shape[:2]
            self._writer = cv2.VideoWriter(
                self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h)
            )
            if not self._writer.isOpened():
                raise OSError(f"cannot open video writer for {self.path}")
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
