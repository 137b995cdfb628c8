"""Training augmentations that keep the camera, the radar and the labels consistent.

The image features are computed once per frame and flip (the frozen backbone's output is
cached), so every augmentation here changes the world *around* a fixed image and moves the
calibration with it:

- **mirror** (`mirror`): the image flipped left-right is a world mirrored in the camera's
  vertical plane. With S = diag(-1, 1, 1) on camera coordinates and M = diag(1, -1, 1) on the
  reference frame, the mirrored camera has ``ref_to_cam' = S ref_to_cam M`` (still a rotation)
  and ``cx' = W - 1 - cx``; radar points and boxes get y -> -y, yaw -> -yaw, vy -> -vy.
- **rotation, scale and shift** (`similarity`): rotate the world about the vertical through
  the camera, scale it about the camera centre (a pinhole image does not change when the world
  is scaled about its centre), shift it along x; points and boxes move, the extrinsic absorbs the
  inverse, so every lifted image feature still lands where its object is.
- **radar point dropout and jitter** (`radar_noise`): a random fraction of points dropped, the
  rest moved by a little Gaussian noise (the sensor's own scatter).
"""

from __future__ import annotations

import math

import numpy as np

from fusion.perception.geometry import CameraModel

_MIRROR_CAMERA = np.diag([-1.0, 1.0, 1.0, 1.0])
_MIRROR_REF = np.diag([1.0, -1.0, 1.0, 1.0])


def mirror(
    points: np.ndarray, boxes: np.ndarray, camera: CameraModel
) -> tuple[np.ndarray, np.ndarray, CameraModel]:
    """The world mirrored to match a left-right flipped image."""
    points, boxes = points.copy(), boxes.copy()
    points["y"] = -points["y"]
    boxes["y"] = -boxes["y"]
    boxes["yaw"] = -boxes["yaw"]
    boxes["vy"] = -boxes["vy"]
    K = camera.K.copy()
    K[0, 2] = camera.width_px - 1 - K[0, 2]
    ref_to_cam = _MIRROR_CAMERA @ camera.ref_to_cam @ _MIRROR_REF
    return (
        points,
        boxes,
        CameraModel(K, camera.width_px, camera.height_px, ref_to_cam, camera.distortion),
    )


def similarity(
    points: np.ndarray,
    boxes: np.ndarray,
    camera: CameraModel,
    angle_rad: float,
    scale: float,
    shift_m: float,
) -> tuple[np.ndarray, np.ndarray, CameraModel]:
    """Rotate by `angle_rad` about the vertical through the camera, scale by `scale` about the
    camera centre and shift by `shift_m` along x; the camera model follows, the image stays."""
    centre = camera.cam_to_ref[:3, 3]
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    linear = scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    transform = np.eye(4)
    transform[:3, :3] = linear
    transform[:3, 3] = centre - linear @ centre + np.array([shift_m, 0.0, 0.0])

    def move(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        if len(array):
            xyz = np.stack([array["x"], array["y"], array["z"]], axis=1).astype(np.float64)
            array["x"], array["y"], array["z"] = (xyz @ linear.T + transform[:3, 3]).T
        return array

    points, boxes = move(points), move(boxes)
    if len(boxes):
        boxes["yaw"] = (boxes["yaw"] + angle_rad + np.pi) % (2 * np.pi) - np.pi
        for name in ("l", "w", "h"):
            boxes[name] = boxes[name] * scale
        vx, vy = boxes["vx"].astype(np.float64), boxes["vy"].astype(np.float64)
        boxes["vx"], boxes["vy"] = scale * (c * vx - s * vy), scale * (s * vx + c * vy)
    # projection is unchanged by the similarity's scale: ref_to_cam may carry it
    ref_to_cam = camera.ref_to_cam @ np.linalg.inv(transform)
    return (
        points,
        boxes,
        CameraModel(camera.K, camera.width_px, camera.height_px, ref_to_cam, camera.distortion),
    )


def radar_noise(
    points: np.ndarray, rng: np.random.Generator, max_dropout: float, jitter_m: float
) -> np.ndarray:
    """Drop a uniform [0, `max_dropout`) fraction of the points, jitter x and y of the rest."""
    if not len(points):
        return points
    keep = rng.random(len(points)) >= rng.uniform(0.0, max_dropout)
    points = points[keep].copy()
    if jitter_m > 0 and len(points):
        points["x"] += rng.normal(0.0, jitter_m, len(points)).astype(np.float32)
        points["y"] += rng.normal(0.0, jitter_m, len(points)).astype(np.float32)
    return points
