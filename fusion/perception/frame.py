"""One synced frame as the model sees it: the image, the radar points in the reference frame,
motion-compensated to the image's capture time, and the camera model.

`FrameInputs` is the hand-over between perception and the model. The fusion node builds it with
`FusionPipeline.assemble`, and training builds its samples by replaying recordings through the
same pipeline in lock-step (`fusion.learn.data.labelled_frames`), so what a model learns from
is what it is served. `radar_points` owns the radar half: each matched scan's points moved to the
camera's capture time (`fusion.perception.sync.motion_compensate`, in the radar's own frame,
which is the ego's), then through the radar's calibration into the reference frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.perception.geometry import CameraModel
from fusion.perception.sync import SyncedFrame, motion_compensate
from fusion.wire.messages import RADAR_POINT_DTYPE


@dataclass
class FrameInputs:
    """One frame for the model."""

    image_bgr: np.ndarray  # (h, w, 3) uint8, any size with the camera's aspect ratio
    points: np.ndarray  # (N,) RADAR_POINT_DTYPE, reference frame, at the image's capture time
    camera: CameraModel  # at the camera's own image size


def to_reference(points: np.ndarray, sensor_to_ref: np.ndarray | None) -> np.ndarray:
    """Radar points moved from their sensor's frame into the reference frame (a copy; the
    same array when the transform is None or the identity)."""
    if sensor_to_ref is None or np.array_equal(sensor_to_ref, np.eye(4)) or not len(points):
        return points
    out = points.copy()
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1).astype(np.float64)
    moved = xyz @ sensor_to_ref[:3, :3].T + sensor_to_ref[:3, 3]
    out["x"], out["y"], out["z"] = moved.T
    return out


def radar_points(
    synced: SyncedFrame,
    ego_speed_mps: float | None,
    ego_yaw_rate_rps: float | None,
    radar_to_ref: dict[str, np.ndarray],
) -> np.ndarray:
    """All radar points of a synced frame, each scan motion-compensated to the camera's
    capture time (when the ego motion is known) and moved into the reference frame with its
    sensor's calibration (`radar_to_ref` by sensor id; missing = already in it)."""
    arrays = []
    for scan in synced.radar:
        points = scan.points
        if ego_speed_mps is not None and ego_yaw_rate_rps is not None:
            dt_s = (synced.camera.capture_ns - scan.capture_ns) * 1e-9
            points = motion_compensate(points, dt_s, ego_speed_mps, ego_yaw_rate_rps)
        arrays.append(to_reference(points, radar_to_ref.get(scan.sensor_id)))
    if not arrays:
        return np.zeros(0, RADAR_POINT_DTYPE)
    return np.concatenate(arrays)
