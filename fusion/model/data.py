"""From sensor data to network tensors, whatever the source.

A `Sample` is one camera image (BGR), the radar points matched to it in the reference frame, its
`CameraModel` and ground-truth boxes. Two adapters make samples: `samples_from_messages` from
any time-ordered stream of ``(topic, message)`` (the simulator's `simulate()` output, a
`RecordingReader`), and `samples_from_astyx` from the Astyx frames. `encode_sample` turns a
sample into numpy arrays (resized image, per-point radar features and their grid cells, the radar
raster, CenterNet targets); `collate` batches them into tensors. `cached_encode` keeps encoded
samples on disk under ``runs/cache/`` so training epochs only pay for the network.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusion.errors import ConfigError
from fusion.model.config import ModelConfig
from fusion.model.network import POINT_FEATURES
from fusion.perception.geometry import CameraModel, box_corners, transform_points
from fusion.perception.image import camera_image
from fusion.wire.messages import (
    CLASS_NAMES,
    GT_BOX_DTYPE,
    Calibration,
    CameraFrame,
    GroundTruth,
    RadarScan,
)

log = logging.getLogger(__name__)

#: Largest gap (ns) between a camera frame and the radar scan paired with it by the adapter.
MAX_RADAR_GAP_NS = 100_000_000


@dataclass
class Sample:
    image_bgr: np.ndarray  # (H, W, 3) uint8
    points: np.ndarray  # (N,) RADAR_POINT_DTYPE in the reference frame
    camera: CameraModel  # at the image's own size
    gt_boxes: np.ndarray  # (M,) GT_BOX_DTYPE in the reference frame
    sequence: str  # drive / run name, for splitting
    key: str  # unique name of the frame


def samples_from_messages(
    messages: Iterable[tuple[str, object]], sequence: str = "drive", frame_step: int = 1
) -> Iterator[Sample]:
    """Pair every `frame_step`-th camera frame with the radar scan nearest in time (within
    `MAX_RADAR_GAP_NS`) and the ground truth stamped with its capture time. Reads the whole
    stream first (drives are short); frames without calibration or radar are skipped with a
    log line."""
    calibrations: dict[str, Calibration] = {}
    cameras: list[CameraFrame] = []
    scans: list[RadarScan] = []
    truths: dict[int, GroundTruth] = {}
    for _topic, msg in messages:
        if isinstance(msg, Calibration):
            calibrations[msg.sensor_id] = msg
        elif isinstance(msg, CameraFrame):
            cameras.append(msg)
        elif isinstance(msg, RadarScan):
            scans.append(msg)
        elif isinstance(msg, GroundTruth):
            truths[msg.capture_ns] = msg
    scan_times = np.array([s.capture_ns for s in scans], dtype=np.int64)
    skipped = 0
    for frame in cameras[::frame_step]:
        calib = calibrations.get(frame.sensor_id) or next(
            (c for c in calibrations.values() if c.width_px > 0), None
        )
        if calib is None or not len(scans):
            skipped += 1
            continue
        nearest = int(np.argmin(np.abs(scan_times - frame.capture_ns)))
        if abs(int(scan_times[nearest]) - frame.capture_ns) > MAX_RADAR_GAP_NS:
            skipped += 1
            continue
        scan = scans[nearest]
        points = scan.points
        radar_calib = calibrations.get(scan.sensor_id)
        if radar_calib is not None and not np.allclose(radar_calib.sensor_to_ref, np.eye(4)):
            points = points.copy()
            xyz = np.stack([points["x"], points["y"], points["z"]], axis=1)
            moved = transform_points(radar_calib.sensor_to_ref, xyz)
            points["x"], points["y"], points["z"] = moved.T
        truth = truths.get(frame.capture_ns)
        yield Sample(
            image_bgr=camera_image(frame),
            points=points,
            camera=CameraModel.from_calibration(calib),
            gt_boxes=truth.boxes if truth is not None else np.zeros(0, GT_BOX_DTYPE),
            sequence=sequence,
            key=f"{sequence}/{frame.seq}",
        )
    if skipped:
        log.info("%s: skipped %d camera frames without calibration or radar", sequence, skipped)


def samples_from_astyx(root: Path | str, indices: Sequence[int]) -> Iterator[Sample]:
    """Astyx frames as samples; the sequence is the run id from `astyx.sequence_ids`."""
    from fusion.datasets import astyx

    runs = astyx.sequence_ids(root)
    for index in indices:
        frame = astyx.read_frame(root, index)
        calib = next(c for c in frame.calibrations if c.sensor_id == astyx.CAMERA_ID)
        yield Sample(
            image_bgr=camera_image(frame.camera),
            points=frame.radar.points,
            camera=CameraModel.from_calibration(calib),
            gt_boxes=frame.ground_truth.boxes,
            sequence=f"astyx/run{runs[index]:03d}",
            key=f"astyx/{index:06d}",
        )


# --------------------------------------------------------------------------- encoding


def radar_point_inputs(
    points: np.ndarray, camera: CameraModel, cfg: ModelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point features (N, POINT_FEATURES) float32 and flat grid cells (N,) int64 of the
    finite points that project into the (input-size) `camera` image, nearest first."""
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1).astype(np.float64)
    raw = np.stack([points[f] for f in ("x", "y", "z", "v_r", "rcs", "dt_s")], axis=1)
    finite = np.all(np.isfinite(raw), axis=1)
    uv, depth = camera.project(xyz)
    keep = finite & camera.in_image(uv) & (depth > 0.1)
    order = np.argsort(depth[keep], kind="stable")[: cfg.max_radar_points]
    idx = np.flatnonzero(keep)[order]
    cell_uv = uv[idx] / cfg.stride
    cell = np.floor(cell_uv)
    features = np.concatenate(
        [raw[idx], np.log(depth[idx])[:, None], cell_uv - cell], axis=1
    ).astype(np.float32)
    cells = (cell[:, 1] * cfg.grid_w + cell[:, 0]).astype(np.int64)
    assert features.shape[1] == POINT_FEATURES
    return features, cells


def radar_raster(points: np.ndarray, camera: CameraModel, cfg: ModelConfig) -> np.ndarray:
    """The `fusion.perception.preprocess` radar raster at the head's grid, (C, h, w) float32."""
    if not cfg.radar_raster_channels:
        return np.zeros((0, cfg.grid_h, cfg.grid_w), np.float32)
    from fusion.perception.preprocess import RADAR_RASTER_CHANNELS, radar_image_raster

    if cfg.radar_raster_channels != len(RADAR_RASTER_CHANNELS):
        raise ConfigError(
            f"model expects {cfg.radar_raster_channels} raster channels, "
            f"fusion.perception.preprocess makes {len(RADAR_RASTER_CHANNELS)}; retrain or use a "
            "matching checkpoint"
        )
    return radar_image_raster(
        points, camera.ref_to_cam, camera.K, cfg.grid_h, cfg.grid_w, cfg.stride
    )


def prepare(image_bgr: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The image resized and normalised by `fusion.perception.preprocess.prepare_image`,
    (3, H, W)."""
    from fusion.perception.preprocess import prepare_image

    return prepare_image(image_bgr, cfg.input_w, cfg.input_h)


def encode_targets(gt_boxes: np.ndarray, camera: CameraModel, cfg: ModelConfig) -> dict:
    """CenterNet targets of the boxes whose centre projects into the (input-size) image."""
    h, w, k = cfg.grid_h, cfg.grid_w, cfg.max_objects
    heatmap = np.zeros((cfg.num_classes, h, w), np.float32)
    t = {
        "index": np.zeros(k, np.int64),
        "mask": np.zeros(k, np.float32),
        "offset": np.zeros((k, 2), np.float32),
        "log_depth": np.zeros(k, np.float32),
        "log_dims": np.zeros((k, 3), np.float32),
        "yaw_bin": np.zeros(k, np.int64),
        "yaw_residual": np.zeros(k, np.float32),
        "velocity": np.zeros((k, 2), np.float32),
        "velocity_mask": np.zeros(k, np.float32),
    }
    local_class = {CLASS_NAMES.index(n): i for i, n in enumerate(cfg.class_names)}
    boxes = [b for b in gt_boxes if int(b["class_id"]) in local_class]
    if boxes:
        centers = np.array([[b["x"], b["y"], b["z"]] for b in boxes], np.float64)
        uv, depth = camera.project(centers)
        order = np.argsort(depth)  # nearest first: they win shared cells and the top-k slots
    else:
        order = []
    n = 0
    for i in order:
        b = boxes[i]
        too_far = math.hypot(float(b["x"]), float(b["y"])) > cfg.max_target_range_m
        if n >= k or too_far or depth[i] < 1.0 or not camera.in_image(uv[i : i + 1])[0]:
            continue
        corners_uv, corners_depth = camera.project(
            box_corners(centers[i], (b["l"], b["w"], b["h"]), float(b["yaw"]))
        )
        corners_uv = corners_uv[corners_depth > 0.1] / cfg.stride
        extent = np.ptp(corners_uv, axis=0) if len(corners_uv) else np.ones(2)
        radius = max(cfg.heatmap_min_radius_cells, 0.2 * float(np.min(extent)))
        c = uv[i] / cfg.stride
        cx, cy = int(c[0]), int(c[1])
        draw_gaussian(heatmap[local_class[int(b["class_id"])]], cx, cy, radius)
        ray = math.atan2(float(b["y"]), float(b["x"]))
        alpha = wrap_angle(float(b["yaw"]) - ray)
        yaw_bin, yaw_residual = encode_yaw(alpha, cfg.yaw_bins)
        t["index"][n] = cy * w + cx
        t["mask"][n] = 1.0
        t["offset"][n] = c - (cx, cy)
        t["log_depth"][n] = math.log(depth[i])
        t["log_dims"][n] = np.log(np.maximum([b["l"], b["w"], b["h"]], 0.05))
        t["yaw_bin"][n] = yaw_bin
        t["yaw_residual"][n] = yaw_residual
        if np.isfinite(b["vx"]) and np.isfinite(b["vy"]):
            cos, sin = math.cos(ray), math.sin(ray)
            t["velocity"][n] = (cos * b["vx"] + sin * b["vy"], -sin * b["vx"] + cos * b["vy"])
            t["velocity_mask"][n] = 1.0
        n += 1
    t["heatmap"] = heatmap
    return t


def draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: float) -> None:
    """Max a 2D Gaussian (sigma = diameter / 6, peak 1 at the centre cell) into `heatmap`."""
    r = max(1, math.ceil(radius))
    sigma = (2 * radius + 1) / 6
    ys, xs = np.mgrid[-r : r + 1, -r : r + 1]
    g = np.exp(-(xs**2 + ys**2) / (2 * sigma**2))
    h, w = heatmap.shape
    x0, x1 = max(0, cx - r), min(w, cx + r + 1)
    y0, y1 = max(0, cy - r), min(h, cy + r + 1)
    patch = g[y0 - cy + r : y1 - cy + r, x0 - cx + r : x1 - cx + r]
    np.maximum(heatmap[y0:y1, x0:x1], patch, out=heatmap[y0:y1, x0:x1])


def wrap_angle(angle_rad: float | np.ndarray) -> float | np.ndarray:
    """Angle wrapped into [-pi, pi)."""
    return (angle_rad + np.pi) % (2 * np.pi) - np.pi


def encode_yaw(alpha_rad: float, bins: int) -> tuple[int, float]:
    """Angle -> (bin over [-pi, pi), residual from the bin centre in bin widths, [-0.5, 0.5))."""
    position = (float(wrap_angle(alpha_rad)) + math.pi) / (2 * math.pi) * bins
    b = min(math.floor(position), bins - 1)
    return b, position - b - 0.5


def decode_yaw(yaw_bin: np.ndarray, residual: np.ndarray, bins: int) -> np.ndarray:
    """Inverse of `encode_yaw` (vectorised), wrapped into [-pi, pi)."""
    return wrap_angle((yaw_bin + 0.5 + residual) * (2 * np.pi / bins) - np.pi)


def encode_sample(sample: Sample, cfg: ModelConfig) -> dict:
    """Everything the network and the evaluation need from one sample, as numpy arrays."""
    camera = sample.camera.scaled(cfg.input_w, cfg.input_h)
    features, cells = radar_point_inputs(sample.points, camera, cfg)
    return {
        "image": prepare(sample.image_bgr, cfg).astype(np.float16),
        "point_features": features,
        "point_cells": cells,
        "raster": radar_raster(sample.points, camera, cfg).astype(np.float16),
        "targets": encode_targets(sample.gt_boxes, camera, cfg),
        "K": camera.K,
        "ref_to_cam": camera.ref_to_cam,
        "gt_boxes": sample.gt_boxes,
        "points": sample.points,
        "camera": sample.camera,
        "sequence": sample.sequence,
        "key": sample.key,
    }


def cached_encode(
    samples: Iterable[Sample], cfg: ModelConfig, source: str, cache_dir: Path | None
) -> list[dict]:
    """`encode_sample` over `samples`, kept in ``cache_dir`` under a name hashed from `source`
    and the config fields encoding depends on (no cache when `cache_dir` is None)."""
    fields = (
        cfg.input_w,
        cfg.input_h,
        cfg.class_names,
        cfg.radar_raster_channels,
        cfg.max_radar_points,
        cfg.max_objects,
        cfg.yaw_bins,
        cfg.heatmap_min_radius_cells,
    )
    digest = hashlib.sha1(repr((source, fields)).encode()).hexdigest()[:16]
    path = cache_dir / f"encoded-{digest}.pkl" if cache_dir is not None else None
    if path is not None and path.exists():
        with path.open("rb") as f:
            return pickle.load(f)
    encoded = [encode_sample(s, cfg) for s in samples]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(encoded, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    return encoded


def collate(items: Sequence[dict], device: torch.device | str = "cpu") -> dict:
    """Stack encoded samples into a batch; radar points are zero-padded to the longest."""
    batch = len(items)
    n_max = max(1, max(len(it["point_cells"]) for it in items))
    features = np.zeros((batch, n_max, POINT_FEATURES), np.float32)
    cells = np.zeros((batch, n_max), np.int64)
    valid = np.zeros((batch, n_max), bool)
    for i, it in enumerate(items):
        n = len(it["point_cells"])
        features[i, :n] = it["point_features"]
        cells[i, :n] = it["point_cells"]
        valid[i, :n] = True

    def stack(key: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([it[key] for it in items])).to(device)

    out = {
        "image": stack("image").float(),
        "point_features": torch.from_numpy(features).to(device),
        "point_cells": torch.from_numpy(cells).to(device),
        "point_valid": torch.from_numpy(valid).to(device),
        "raster": stack("raster").float(),
    }
    if "targets" in items[0]:
        out["targets"] = {
            k: torch.from_numpy(np.stack([it["targets"][k] for it in items])).to(device)
            for k in items[0]["targets"]
        }
    return out
