"""Head maps -> `DETECTION_DTYPE` boxes in the reference (radar) frame.

Peaks are cells that equal the 3x3 max-pool of their class heatmap (CenterNet's NMS), the
`top_k` best over all classes are kept above `score_threshold`. Each peak's pixel (cell + offset,
times the stride) and depth are back-projected through the input-size `CameraModel`; yaw is the
observation angle plus the viewing ray's azimuth, and velocity is rotated back from the ray's
(along, across) axes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)

from fusion.model.config import ModelConfig
from fusion.model.data import decode_yaw, wrap_angle
from fusion.perception.geometry import CameraModel
from fusion.wire.messages import CLASS_NAMES, DETECTION_DTYPE


def find_peaks(heatmap_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, ...]:
    """(B, C, h, w) logits -> scores, classes, ys, xs, each (B, top_k), best first."""
    scores = torch.sigmoid(heatmap_logits.float())
    peaks = scores * (F.max_pool2d(scores, 3, stride=1, padding=1) == scores)
    b, c, h, w = peaks.shape
    k = min(top_k, c * h * w)
    top, flat = peaks.reshape(b, -1).topk(k)
    classes = flat // (h * w)
    cell = flat % (h * w)
    return top, classes, cell // w, cell % w


def decode(
    out: dict[str, torch.Tensor],
    cameras: list[CameraModel],
    cfg: ModelConfig,
    points: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """One (n,) `DETECTION_DTYPE` array per batch element; `cameras` at the input size. With
    the frames' radar `points` (and ``cfg.radar_refine``) ranges are snapped to the radar
    (`refine_with_radar`); pass None in camera-only mode."""
    scores, classes, ys, xs = (t.cpu().numpy() for t in find_peaks(out["heatmap"], cfg.top_k))
    maps = {
        k: out[k].float().cpu().numpy()
        for k in ("offset", "log_depth", "log_dims", "yaw_bin", "yaw_residual", "velocity")
    }
    global_class = np.array([CLASS_NAMES.index(n) for n in cfg.class_names], np.int32)
    results = []
    for i, camera in enumerate(cameras):
        keep = scores[i] >= cfg.score_threshold
        y, x = ys[i][keep], xs[i][keep]
        det = np.zeros(int(keep.sum()), DETECTION_DTYPE)
        if len(det):
            at = {k: v[i][:, y, x].T for k, v in maps.items()}  # (n, channels)
            uv = (np.stack([x, y], axis=1) + at["offset"]) * cfg.stride
            xyz = camera.backproject(uv, np.exp(at["log_depth"][:, 0]))
            ray = np.arctan2(xyz[:, 1], xyz[:, 0])
            yaw_bin = at["yaw_bin"].argmax(axis=1)
            residual = at["yaw_residual"][np.arange(len(det)), yaw_bin]
            along, across = at["velocity"][:, 0], at["velocity"][:, 1]
            dims = np.exp(at["log_dims"])
            det["class_id"] = global_class[classes[i][keep]]
            det["score"] = scores[i][keep]
            det["x"], det["y"], det["z"] = xyz.T
            det["l"], det["w"], det["h"] = dims.T
            det["yaw"] = wrap_angle(decode_yaw(yaw_bin, residual, cfg.yaw_bins) + ray)
            det["vx"] = np.cos(ray) * along - np.sin(ray) * across
            det["vy"] = np.sin(ray) * along + np.cos(ray) * across
            if points is not None and cfg.radar_refine:
                refine_with_radar(det, points[i], cfg)
            det = bev_nms(det, cfg.bev_nms_m)
        results.append(det)
    return results


def bev_nms(det: np.ndarray, radius_m: float) -> np.ndarray:
    """Keep, best score first, boxes with no kept box of their class within `radius_m` on the
    ground plane."""
    if radius_m <= 0 or len(det) < 2:
        return det
    order = np.argsort(-det["score"], kind="stable")
    kept: list[int] = []
    for i in order:
        d = det[i]
        if not any(
            det["class_id"][k] == d["class_id"]
            and np.hypot(det["x"][k] - d["x"], det["y"][k] - d["y"]) < radius_m
            for k in kept
        ):
            kept.append(int(i))
    return det[np.sort(kept)]


def refine_with_radar(det: np.ndarray, points: np.ndarray, cfg: ModelConfig) -> None:
    """Move each box along its viewing ray (in place) so its range is the median range of the
    radar points it covers plus the fitted near-surface-to-centre offset.

    A point is covered when it lies within the box's half extent across the ray (+0.3 m), its
    height (+0.5 m) and `radar_refine_gate_m` in range of the box centre. Boxes covering fewer
    than 2 points keep the network's range. The network places boxes well across the ray but its
    range, regressed from the image and pooled point features, is coarser than the radar's.
    """
    if not len(det) or not len(points):
        return
    px, py, pz = (points[k].astype(np.float64) for k in ("x", "y", "z"))
    point_range = np.hypot(px, py)
    point_azimuth = np.arctan2(py, px)
    a, b = cfg.radar_refine_offset_m
    for d in det:
        box_range = float(np.hypot(d["x"], d["y"]))
        azimuth = float(np.arctan2(d["y"], d["x"]))
        alpha = float(d["yaw"]) - azimuth
        half_along = abs(d["l"] / 2 * np.cos(alpha)) + abs(d["w"] / 2 * np.sin(alpha))
        half_across = abs(d["l"] / 2 * np.sin(alpha)) + abs(d["w"] / 2 * np.cos(alpha))
        across = point_range * np.sin(wrap_angle(point_azimuth - azimuth))
        covered = (
            (np.abs(across) < half_across + 0.3)
            & (np.abs(pz - d["z"]) < d["h"] / 2 + 0.5)
            & (np.abs(point_range - box_range) < cfg.radar_refine_gate_m)
        )
        if covered.sum() < 2:
            continue
        new_range = float(np.median(point_range[covered])) + a + b * half_along
        scale = new_range / max(box_range, 1e-3)
        d["x"], d["y"] = d["x"] * scale, d["y"] * scale
