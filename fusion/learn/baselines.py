"""Non-learned baselines and the Astyx evaluation protocol they are scored with.

`radar_cluster_baseline` is the radar-only reference the learned model must beat: DBSCAN
clusters of radar points in the ground plane, each cluster's centre pushed `push_m` further
along the ray from the sensor (the radar sees the near face of a car, the box centre is behind
it), a fixed car-sized box facing along the ray, and a score from the cluster's point count and
magnitude. It uses scikit-learn's DBSCAN.

The Astyx protocol (``DESIGN.md``, "Evaluating on the real frames"): class ``car`` only,
nuScenes-style centre-distance AP on the ground plane at 0.5, 1, 2 and 4 m (`fusion.learn.metrics`),
mean over the four. Ground-truth cars count when within 50 m (ground range) and their centre
projects into the camera image (`filter_gt_for_eval`); trucks and buses are other classes, so a
detection on one is a false positive, never ignored. Detections are held to the same region
(`in_eval_region`), as nuScenes filters detections by range: what lies outside it can be neither
right nor wrong.

``python -m fusion.learn.baselines --astyx`` prints the table for the whole Astyx set.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from sklearn.cluster import DBSCAN

from fusion.learn.metrics import EvalResult, evaluate_detections
from fusion.perception.geometry import CameraModel
from fusion.wire.messages import CLASS_NAMES, DETECTION_DTYPE

CAR = CLASS_NAMES.index("car")
#: Ground range (x, y) within which the Astyx protocol counts ground truth.
EVAL_MAX_RANGE_M = 50.0


@dataclass(frozen=True)
class ClusterBaselineConfig:
    """Settings of `radar_cluster_baseline`; the defaults are tuned on Astyx frames 0-445."""

    #: DBSCAN neighbourhood radius in the ground plane (x, y).
    eps_m: float = 0.75
    #: Points (including itself) a core point needs within `eps_m`.
    min_samples: int = 3
    #: Points outside this height band (radar frame) are ground or overhead clutter. Heights are
    #: not levelled for the radar's slight downward pitch: raw z scores better, as tall
    #: far-away structures then stand out more.
    min_z_m: float = -1.0
    max_z_m: float = 1.0
    #: Points beyond this ground range are not clustered.
    max_range_m: float = 60.0
    #: How far the centre moves along the ray, behind the cluster's mean.
    push_m: float = 1.5
    #: Score = sigmoid(ln(points) + (peak magnitude - `mag_offset`) / `mag_scale`
    #: - `height_weight` * mean z - `score_offset`): big, bright, low clusters look like cars.
    mag_offset: float = 50.0
    mag_scale: float = 20.0
    height_weight: float = 1.5
    score_offset: float = 3.0
    #: Fixed box size (length, width, height), metres.
    box_lwh_m: tuple[float, float, float] = (4.3, 1.8, 1.5)


def radar_cluster_baseline(
    points: np.ndarray, config: ClusterBaselineConfig | None = None
) -> np.ndarray:
    """Car detections (`DETECTION_DTYPE`) from one scan of `RADAR_POINT_DTYPE` points."""
    cfg = config or ClusterBaselineConfig()
    x, y, z = (points[name].astype(np.float64) for name in ("x", "y", "z"))
    keep = (z >= cfg.min_z_m) & (z <= cfg.max_z_m) & (np.hypot(x, y) <= cfg.max_range_m)
    xy = np.stack([x[keep], y[keep]], axis=1)
    if len(xy) < cfg.min_samples:
        return np.zeros(0, dtype=DETECTION_DTYPE)
    labels = DBSCAN(eps=cfg.eps_m, min_samples=cfg.min_samples).fit_predict(xy)
    z_kept, mag_kept = z[keep], points["rcs"][keep].astype(np.float64)
    cluster_ids = np.unique(labels[labels >= 0])
    out = np.zeros(len(cluster_ids), dtype=DETECTION_DTYPE)
    for row, cluster in zip(out, cluster_ids, strict=True):
        members = labels == cluster
        centre = xy[members].mean(axis=0)
        azimuth = np.arctan2(centre[1], centre[0])
        logit = (
            np.log(members.sum())
            + (mag_kept[members].max() - cfg.mag_offset) / cfg.mag_scale
            - cfg.height_weight * z_kept[members].mean()
            - cfg.score_offset
        )
        row["class_id"] = CAR
        row["score"] = 1.0 / (1.0 + np.exp(-logit))
        row["x"] = centre[0] + cfg.push_m * np.cos(azimuth)
        row["y"] = centre[1] + cfg.push_m * np.sin(azimuth)
        row["z"] = z_kept[members].mean()
        row["l"], row["w"], row["h"] = cfg.box_lwh_m
        row["yaw"] = azimuth
    return out


def in_eval_region(
    xyz: np.ndarray, camera: CameraModel, max_range_m: float = EVAL_MAX_RANGE_M
) -> np.ndarray:
    """Mask of (N, 3) reference-frame centres within `max_range_m` ground range whose
    projection lands inside `camera`'s image."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    uv, _ = camera.project(xyz)
    return (np.hypot(xyz[:, 0], xyz[:, 1]) <= max_range_m) & camera.in_image(uv)


def filter_gt_for_eval(
    gt_boxes: np.ndarray, camera: CameraModel, max_range_m: float = EVAL_MAX_RANGE_M
) -> np.ndarray:
    """The ground-truth boxes the Astyx protocol scores: centre within `max_range_m` ground
    range and projecting into the image. All classes are kept (the caller picks classes)."""
    return gt_boxes[in_eval_region(_centres(gt_boxes), camera, max_range_m)]


def filter_detections_for_eval(
    detections: np.ndarray, camera: CameraModel, max_range_m: float = EVAL_MAX_RANGE_M
) -> np.ndarray:
    """Detections inside the same region as `filter_gt_for_eval`."""
    return detections[in_eval_region(_centres(detections), camera, max_range_m)]


def evaluate_astyx(
    detector: Callable[..., np.ndarray],
    root: Path | str | None = None,
    indices: Sequence[int] | None = None,
) -> EvalResult:
    """Run ``detector(frame: AstyxFrame) -> DETECTION_DTYPE`` on Astyx frames (all by default)
    and score it with the Astyx protocol (cars only)."""
    from fusion.datasets import astyx

    root = astyx.default_root() if root is None else Path(root)
    pairs = []
    for index in astyx.frame_indices(root) if indices is None else indices:
        frame = astyx.read_frame(root, index)
        camera = CameraModel.from_calibration(frame.calibrations[0])
        detections = filter_detections_for_eval(detector(frame), camera)
        pairs.append((detections, filter_gt_for_eval(frame.ground_truth.boxes, camera)))
    return evaluate_detections(pairs, classes=("car",), range_bins_m=((0, 20), (20, 35), (35, 50)))


def _centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([boxes["x"], boxes["y"], boxes["z"]], axis=1).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusion.learn.baselines", description="score the radar cluster baseline"
    )
    parser.add_argument("--astyx", action="store_true", help="on all Astyx HiRes2019 frames")
    parser.add_argument("--root", type=Path, default=None, help="Astyx directory")
    for f in fields(ClusterBaselineConfig):
        if f.type in ("float", "int"):
            parser.add_argument(
                f"--{f.name.replace('_', '-')}", type=float if f.type == "float" else int
            )
    args = parser.parse_args(argv)
    if not args.astyx:
        parser.error("say which data to score: --astyx")
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(ClusterBaselineConfig)
        if getattr(args, f.name, None) is not None
    }
    config = ClusterBaselineConfig(**overrides)
    result = evaluate_astyx(
        lambda frame: radar_cluster_baseline(frame.radar.points, config), args.root
    )
    print(f"radar cluster baseline, {config}")
    print(result.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
