"""Calibration and the transforms between the radar (reference), camera and ego frames.

Frames: the reference frame is the radar's (x forward, y left, z up, metres), as in the Astyx
data; the camera frame is OpenCV's (x right, y down, z forward). A `Calibration` message carries
``sensor_to_ref`` (4x4) for each sensor; `CameraModel` bundles a camera's intrinsics with the
inverse transform so projecting reference-frame points is one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.errors import CalibrationError
from fusion.wire import validate
from fusion.wire.messages import Calibration


def check_transform(transform: np.ndarray, what: str = "transform") -> np.ndarray:
    """Return `transform` as a float64 4x4 rigid transform, or raise `CalibrationError`."""
    why = validate.rigid_transform_problem(transform, what)
    if why is not None:
        raise CalibrationError(why)
    return np.asarray(transform, dtype=np.float64)


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (exact, without a general matrix inverse)."""
    inv = np.eye(4)
    rotation = transform[:3, :3]
    inv[:3, :3] = rotation.T
    inv[:3, 3] = -rotation.T @ transform[:3, 3]
    return inv


def transform_points(transform: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points; returns (N, 3) float64."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    return xyz @ transform[:3, :3].T + transform[:3, 3]


def rotation_z(yaw_rad: float) -> np.ndarray:
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rotation
    t[:3, 3] = translation
    return t


def quaternion_to_rotation(w: float, x: float, y: float, z: float) -> np.ndarray:
    """Rotation matrix of a unit quaternion (w, x, y, z)."""
    n = np.sqrt(w * w + x * x + y * y + z * z)
    if not np.isfinite(n) or n < 1e-9:
        raise CalibrationError(f"quaternion {(w, x, y, z)} has no direction")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotation_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """The unit quaternion (w, x, y, z), w >= 0, of a 3x3 rotation matrix (the inverse of
    `quaternion_to_rotation`; Shepperd's method, stable for any angle)."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = ((r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s)
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = ((r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s)
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = ((r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s)
    w, x, y, z = (float(v) for v in np.asarray(q) / np.linalg.norm(q))
    return (w, x, y, z) if w >= 0 else (-w, -x, -y, -z)


def box_corners(center: np.ndarray, size_lwh: np.ndarray, yaw_rad: float) -> np.ndarray:
    """The 8 corners (8, 3) of a box with centre (x, y, z), size (l, w, h) and yaw about z."""
    l, w, h = size_lwh
    x = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    y = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    z = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    corners = np.stack([x, y, z], axis=1) @ rotation_z(yaw_rad).T
    return corners + np.asarray(center, dtype=np.float64)


#: How far in front of the camera every corner of a box must be for it to be drawn (m).
MIN_BOX_DEPTH_M = 0.1


@dataclass(frozen=True)
class CameraModel:
    """A pinhole camera: intrinsics ``K`` (3x3), image size, and ``ref_to_cam`` (4x4)."""

    K: np.ndarray
    width_px: int
    height_px: int
    ref_to_cam: np.ndarray
    distortion: np.ndarray

    @classmethod
    def from_calibration(cls, calib: Calibration) -> CameraModel:
        """The camera of `calib`; raises `CalibrationError` for anything
        `fusion.wire.validate.calibration_problem` rules out, or no intrinsics (not a camera)."""
        K = np.asarray(calib.intrinsics, dtype=np.float64)
        why = validate.intrinsics_problem(K) or validate.calibration_problem(calib)
        if why is not None:
            raise CalibrationError(f"camera {calib.sensor_id!r:.80}: {why}")
        cam_to_ref = np.asarray(calib.sensor_to_ref, dtype=np.float64)
        return cls(
            K=K,
            width_px=int(calib.width_px),
            height_px=int(calib.height_px),
            ref_to_cam=invert_transform(cam_to_ref),
            distortion=np.asarray(calib.distortion, dtype=np.float64),
        )

    @property
    def cam_to_ref(self) -> np.ndarray:
        return invert_transform(self.ref_to_cam)

    def scaled(self, width_px: int, height_px: int) -> CameraModel:
        """The same camera with its image resized to `width_px` x `height_px`."""
        sx, sy = width_px / self.width_px, height_px / self.height_px
        K = self.K.copy()
        K[0] *= sx
        K[1] *= sy
        return CameraModel(K, width_px, height_px, self.ref_to_cam, self.distortion)

    def project(self, xyz_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project (N, 3) reference-frame points to pixels.

        Returns ``(uv, depth_m)``: (N, 2) pixel coordinates and (N,) depth along the optical
        axis. Points at or behind the camera (depth <= 0.1 m) get NaN pixel coordinates.
        """
        cam = transform_points(self.ref_to_cam, xyz_ref)
        depth = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uvw = cam @ self.K.T
            uv = uvw[:, :2] / uvw[:, 2:3]
        uv[depth <= 0.1] = np.nan
        return uv, depth

    def project_box(self, box: np.void) -> np.ndarray | None:
        """The pixel coordinates (8, 2) of the corners of `box` (a record with x y z l w h
        yaw: a detection or a ground-truth box), or None when a corner is not at least
        `MIN_BOX_DEPTH_M` in front of the camera or does not project to a finite pixel."""
        corners = box_corners(
            np.array([box["x"], box["y"], box["z"]]),
            np.array([box["l"], box["w"], box["h"]]),
            float(box["yaw"]),
        )
        uv, depth = self.project(corners)
        if np.any(depth <= MIN_BOX_DEPTH_M) or not np.all(np.isfinite(uv)):
            return None
        return uv

    def in_image(self, uv: np.ndarray) -> np.ndarray:
        """Mask of pixel coordinates inside the image (NaN counts as outside)."""
        u, v = uv[:, 0], uv[:, 1]
        with np.errstate(invalid="ignore"):
            return (u >= 0) & (u < self.width_px) & (v >= 0) & (v < self.height_px)

    def backproject(self, uv: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) at depths (N,) along the optical axis -> (N, 3) reference points."""
        uv1 = np.concatenate([uv, np.ones((len(uv), 1))], axis=1)
        cam = (uv1 @ np.linalg.inv(self.K).T) * np.asarray(depth_m).reshape(-1, 1)
        return transform_points(self.cam_to_ref, cam)
