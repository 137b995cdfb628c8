"""Head maps -> `DETECTION_DTYPE` boxes in the reference (radar) frame.

Peaks are cells that equal the 3x3 max-pool of their class heatmap (CenterNet's NMS); the
`top_k` best over all classes are kept above `score_threshold`. A peak's ground-plane centre is
its cell plus the regressed offset (grid conventions of `fusion.model.inputs.head_cell_centres`),
z, size, yaw (from its sine and cosine) and velocity are read at that cell. Boxes of one class
closer than ``bev_nms_m`` to a better one are dropped: two cars cannot stand on one spot.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)

from fusion.model.config import ModelConfig
from fusion.wire.messages import CLASS_NAMES, DETECTION_DTYPE

REGRESSIONS = ("offset", "z", "log_dims", "yaw", "velocity")


def find_peaks(heatmap_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, ...]:
    """(B, C, rows, cols) logits -> scores, classes, rows, cols, each (B, k), best first."""
    scores = torch.sigmoid(heatmap_logits.float())
    peaks = scores * (F.max_pool2d(scores, 3, stride=1, padding=1) == scores)
    b, c, rows, cols = peaks.shape
    top, flat = peaks.reshape(b, -1).topk(min(top_k, c * rows * cols))
    cell = flat % (rows * cols)
    return top, flat // (rows * cols), cell // cols, cell % cols


def decode(out: dict[str, torch.Tensor | np.ndarray], cfg: ModelConfig) -> list[np.ndarray]:
    """One (n,) `DETECTION_DTYPE` array per batch element (numpy or torch head outputs)."""
    out = {k: torch.as_tensor(v) for k, v in out.items() if k == "heatmap" or k in REGRESSIONS}
    scores, classes, rows, cols = (t.numpy() for t in find_peaks(out["heatmap"], cfg.top_k))
    maps = {k: out[k].float().numpy() for k in REGRESSIONS}
    global_class = np.array([CLASS_NAMES.index(n) for n in cfg.class_names], np.int32)
    cell = cfg.head_cell_m
    results = []
    for i in range(len(scores)):
        keep = scores[i] >= cfg.score_threshold
        r, c = rows[i][keep], cols[i][keep]
        det = np.zeros(len(r), DETECTION_DTYPE)
        if len(det):
            at = {k: v[i][:, r, c].T for k, v in maps.items()}  # (n, channels)
            det["class_id"] = global_class[classes[i][keep]]
            det["score"] = scores[i][keep]
            det["x"] = cfg.x_range_m[1] - (r + at["offset"][:, 0]) * cell
            det["y"] = cfg.y_range_m[1] - (c + at["offset"][:, 1]) * cell
            det["z"] = at["z"][:, 0]
            det["l"], det["w"], det["h"] = np.exp(np.clip(at["log_dims"], -3.0, 3.0)).T
            det["yaw"] = np.arctan2(at["yaw"][:, 0], at["yaw"][:, 1])
            det["vx"], det["vy"] = at["velocity"].T
            det = bev_nms(det, cfg.bev_nms_m)
        results.append(det)
    return results


def bev_nms(det: np.ndarray, radius_m: float) -> np.ndarray:
    """Keep, best score first, the boxes with no kept box of their class within `radius_m` on
    the ground plane (in their original order)."""
    if radius_m <= 0 or len(det) < 2:
        return det
    order = np.argsort(-det["score"], kind="stable")
    xy = np.stack([det["x"], det["y"]], axis=1).astype(np.float64)
    kept: list[int] = []
    for i in order:
        near = np.hypot(*(xy[kept] - xy[i]).T) < radius_m if kept else np.zeros(0, bool)
        if not np.any(near & (det["class_id"][kept] == det["class_id"][i])):
            kept.append(int(i))
    return det[np.sort(kept)]
