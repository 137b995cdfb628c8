"""Reader for the Astyx HiRes2019 radar/camera dataset: one frame in, project messages out.

The dataset (``astyx_hires2019/``) holds, per frame index ``i`` (file stem ``%06d``): a 4D radar
scan ``radar_6455/i.txt`` (two header lines, then ``X Y Z V_r Mag`` rows in the radar frame), a
JPEG ``camera_front/i.jpg`` (2048x618), ``calibration/i.json`` (``T_to_ref_COS`` per sensor, ``K``
for the camera; the radar is the reference frame) and ``groundtruth_obj3d/i.json`` (3D boxes).
`read_frame` turns one index into the project's messages, checked against the images
(``docs/datasets.md`` has the details and the evidence):

- ``dimension3d`` is (length, width, height) and ``orientation_quat`` is (w, x, y, z) taking the
  box frame (x forward along the length) to the radar frame; yaw is the heading of the box's
  x axis in the ground plane (the labels' pitch/roll, under 10 degrees, are dropped).
- Astyx ``V_r`` is positive for approaching targets; ``RadarScan`` wants positive moving away,
  so ``v_r = -V_r``. ``V_r`` aliases at about +-5.2 m/s and is passed on unwrapped. ``Mag``
  becomes ``rcs`` (uncalibrated magnitude); ``dt_s`` is 0.
- ``occlusion`` 0/1/2 (fully visible / partly / largely occluded) maps to 0.0 / 0.5 / 0.8.
- Velocities are not labelled: ground-truth ``vx``, ``vy`` are NaN.
- The data has no timestamps: frame ``i`` is stamped ``i * NOMINAL_PERIOD_NS`` on the
  ``assigned`` clock, for every sensor of the frame.
- Frames come in short runs; `sequence_ids` recovers them from image continuity.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fusion.errors import CalibrationError, ConfigError
from fusion.perception.geometry import check_transform, quaternion_to_rotation
from fusion.wire import validate
from fusion.wire.messages import (
    CLASS_NAMES,
    GT_BOX_DTYPE,
    RADAR_POINT_DTYPE,
    Calibration,
    CameraFrame,
    GroundTruth,
    RadarScan,
)

#: Environment variable that overrides where `default_root` looks.
ROOT_ENV = "FUSION_ASTYX_ROOT"
#: Nominal spacing of the assigned frame timestamps (the data has none).
NOMINAL_PERIOD_NS = 100_000_000
CAMERA_ID = "camera_front"
RADAR_ID = "radar"
_RADAR_UID = "radar_6455"

#: Astyx ``classname`` -> index into `CLASS_NAMES`. Cyclist/Motorcyclist are in the Astyx label
#: specification but do not occur in HiRes2019; they are mapped for completeness.
CLASS_MAP: dict[str, int] = {
    "Car": CLASS_NAMES.index("car"),
    "Truck": CLASS_NAMES.index("truck"),
    "Bus": CLASS_NAMES.index("truck"),
    "Trailer": CLASS_NAMES.index("truck"),
    "Towed Object": CLASS_NAMES.index("truck"),
    "Other Vehicle": CLASS_NAMES.index("truck"),
    "Person": CLASS_NAMES.index("pedestrian"),
    "Cyclist": CLASS_NAMES.index("cyclist"),
    "Motorcyclist": CLASS_NAMES.index("cyclist"),
}

#: Astyx occlusion level -> fraction hidden in `GT_BOX_DTYPE` (anything else -> -1, unknown).
OCCLUSION_MAP: dict[int, float] = {0: 0.0, 1: 0.5, 2: 0.8}

#: Consecutive frames with fewer epipolar-consistent ORB matches than this start a new run
#: (same-run pairs mostly have 100-800, scene changes under 20; see `sequence_ids`).
RUN_MIN_INLIERS = 30


@dataclass
class AstyxFrame:
    """One Astyx frame as project messages (all stamped with the same assigned time)."""

    index: int
    camera: CameraFrame
    radar: RadarScan
    ground_truth: GroundTruth
    calibrations: list[Calibration]


def default_root() -> Path:
    """Where the dataset lives: ``$FUSION_ASTYX_ROOT`` if set, else
    ``<repo>/../shared/realdata/astyx_hires2019``. The path may not exist; callers check."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "realdata" / "astyx_hires2019"


def _check_root(root: Path | str) -> Path:
    root = Path(root)
    if not (root / _RADAR_UID).is_dir() or not (root / "groundtruth_obj3d").is_dir():
        raise ConfigError(
            f"{root} is not an Astyx HiRes2019 directory (no radar_6455/ or groundtruth_obj3d/); "
            f"pass the dataset directory or set ${ROOT_ENV}"
        )
    return root


def frame_indices(root: Path | str) -> list[int]:
    """Sorted frame indices present in the dataset (those with a radar scan)."""
    root = _check_root(root)
    return sorted(int(p.stem) for p in (root / _RADAR_UID).glob("*.txt") if p.stem.isdigit())


def read_frame(root: Path | str, index: int) -> AstyxFrame:
    """Read frame `index` into messages; see the module docstring for the conventions."""
    root = _check_root(root)
    stem = f"{index:06d}"
    capture_ns = index * NOMINAL_PERIOD_NS
    common = {"seq": index, "capture_ns": capture_ns, "clock": "assigned"}

    jpeg = (root / CAMERA_ID / f"{stem}.jpg").read_bytes()
    width_px, height_px = jpeg_size(jpeg)
    camera = CameraFrame(
        image=np.frombuffer(jpeg, dtype=np.uint8).copy(),
        encoding="jpeg",
        width_px=width_px,
        height_px=height_px,
        sensor_id=CAMERA_ID,
        **common,
    )
    radar = RadarScan(
        points=read_radar_points(root / _RADAR_UID / f"{stem}.txt"), sensor_id=RADAR_ID, **common
    )
    calibrations = read_calibrations(
        root / "calibration" / f"{stem}.json", width_px, height_px, capture_ns, index
    )
    ground_truth = GroundTruth(
        boxes=read_boxes(root / "groundtruth_obj3d" / f"{stem}.json"),
        sensor_id="groundtruth_obj3d",
        **common,
    )
    return AstyxFrame(index, camera, radar, ground_truth, calibrations)


def read_radar_points(path: Path) -> np.ndarray:
    """Parse one ``radar_6455/*.txt`` scan into `RADAR_POINT_DTYPE` points."""
    lines = path.read_text().splitlines()
    columns = lines[1].split() if len(lines) > 1 else []
    needed = ("X", "Y", "Z", "V_r", "Mag")
    if not all(name in columns for name in needed):
        raise ConfigError(f"{path}: second line should name the columns {needed}, got {columns}")
    values = np.array(" ".join(lines[2:]).split(), dtype=np.float64).reshape(-1, len(columns))
    points = np.zeros(len(values), dtype=RADAR_POINT_DTYPE)
    for name, field in (("X", "x"), ("Y", "y"), ("Z", "z"), ("Mag", "rcs")):
        points[field] = values[:, columns.index(name)]
    points["v_r"] = -values[:, columns.index("V_r")]
    return points


def read_boxes(path: Path) -> np.ndarray:
    """Parse one ``groundtruth_obj3d/*.json`` into `GT_BOX_DTYPE` boxes in the radar frame."""
    objects = json.loads(path.read_text())["objects"]
    boxes = np.zeros(len(objects), dtype=GT_BOX_DTYPE)
    for i, obj in enumerate(objects):
        name = obj["classname"]
        if name not in CLASS_MAP:
            raise ConfigError(f"{path}: unknown Astyx class {name!r}; add it to CLASS_MAP")
        rotation = quaternion_to_rotation(*obj["orientation_quat"])
        box = boxes[i]
        box["class_id"] = CLASS_MAP[name]
        box["track_id"] = int(obj.get("object_id", -1))
        box["x"], box["y"], box["z"] = obj["center3d"]
        box["l"], box["w"], box["h"] = obj["dimension3d"]
        box["yaw"] = np.arctan2(rotation[1, 0], rotation[0, 0])
        box["vx"] = box["vy"] = np.nan
        box["occlusion"] = OCCLUSION_MAP.get(obj.get("occlusion"), -1.0)
    return boxes


def read_calibrations(
    path: Path, width_px: int, height_px: int, capture_ns: int = 0, seq: int = 0
) -> list[Calibration]:
    """Parse one ``calibration/*.json``: the camera (``camera_front``) and the radar
    (``radar``, identity since it is the reference frame). The lidar entry is ignored."""
    sensors = {s["sensor_uid"]: s["calib_data"] for s in json.loads(path.read_text())["sensors"]}
    if CAMERA_ID not in sensors or "K" not in sensors[CAMERA_ID]:
        raise CalibrationError(f"{path} has no {CAMERA_ID} entry with intrinsics K")
    camera = sensors[CAMERA_ID]
    common = {"seq": seq, "capture_ns": capture_ns, "clock": "assigned"}
    radar_to_ref = np.asarray(sensors.get(_RADAR_UID, {}).get("T_to_ref_COS", np.eye(4)))
    if not np.allclose(radar_to_ref, np.eye(4)):
        raise CalibrationError(f"{path}: the radar should be the reference frame (identity)")
    return [
        Calibration(
            sensor_id=CAMERA_ID,
            sensor_to_ref=check_transform(camera["T_to_ref_COS"], f"{path} {CAMERA_ID}"),
            intrinsics=np.asarray(camera["K"], dtype=np.float64),
            distortion=np.zeros(5),
            width_px=width_px,
            height_px=height_px,
            **common,
        ),
        Calibration(
            sensor_id=RADAR_ID,
            sensor_to_ref=np.eye(4),
            intrinsics=np.zeros((3, 3)),
            distortion=np.zeros(5),
            **common,
        ),
    ]


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a baseline or progressive JPEG, read from its SOF marker."""
    if data[:2] != b"\xff\xd8":
        raise ConfigError("not a JPEG file (no SOI marker)")
    size = validate.jpeg_size(data)
    if size is None:
        raise ConfigError("JPEG has no SOF marker; the file is truncated or not a JPEG")
    return size


def sequence_ids(root: Path | str, indices: Sequence[int] | None = None) -> dict[int, int]:
    """Frame index -> run id (0, 1, ...), starting a new run where the camera view jumps.

    Astyx frames come in short runs (a few to ~20 frames of one drive) with no marker between
    them and no timestamps. Consecutive frames are one run when their half-resolution images
    share at least `RUN_MIN_INLIERS` ORB feature matches consistent with one epipolar geometry
    (RANSAC fundamental matrix); a gap in the indices always starts a new run. Errors lean
    towards joining runs, which is the safe side for a train/validation split. Reading and
    matching all 446 frames takes about 10 s on one core, so results are cached per process;
    `indices` limits it to some frames (sorted; run ids then count from the first of them).
    """
    root = _check_root(root).resolve()
    chosen = frame_indices(root) if indices is None else sorted(indices)
    return dict(_sequence_ids(root, tuple(chosen)))


@functools.lru_cache(maxsize=8)
def _sequence_ids(root: Path, indices: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    orb = cv2.ORB_create(nfeatures=1000)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    runs: dict[int, int] = {}
    run, previous = 0, None
    for k, index in enumerate(indices):
        image = cv2.imread(
            str(root / CAMERA_ID / f"{index:06d}.jpg"), cv2.IMREAD_REDUCED_GRAYSCALE_2
        )
        if image is None:
            raise ConfigError(f"cannot decode {root / CAMERA_ID / f'{index:06d}.jpg'}")
        features = orb.detectAndCompute(image, None)
        if k and (
            index != indices[k - 1] + 1
            or _epipolar_inliers(previous, features, matcher) < RUN_MIN_INLIERS
        ):
            run += 1
        runs[index] = run
        previous = features
    return tuple(runs.items())


def _epipolar_inliers(before: tuple, after: tuple, matcher: cv2.BFMatcher) -> int:
    (points_a, descriptors_a), (points_b, descriptors_b) = before, after
    if descriptors_a is None or descriptors_b is None or len(descriptors_b) < 2:
        return 0
    pairs = matcher.knnMatch(descriptors_a, descriptors_b, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
    if len(good) < 8:
        return 0
    xy_a = np.float32([points_a[m.queryIdx].pt for m in good])
    xy_b = np.float32([points_b[m.trainIdx].pt for m in good])
    _, mask = cv2.findFundamentalMat(xy_a, xy_b, cv2.FM_RANSAC, 2.0, 0.99)
    return 0 if mask is None else int(mask.sum())
