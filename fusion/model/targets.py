"""Ground-truth boxes -> the head's training targets on the BEV grid (CenterPoint-style).

Each box of a class the model detects, whose centre falls on the head grid, draws a Gaussian
(peak 1 at its centre cell, radius from its footprint) into its class heatmap and fills one of
`max_objects` slots with its cell index and regression targets: the centre's offset inside the
cell (rows, cols), z, log (l, w, h), yaw as (sin, cos), and velocity over ground where the data
has it (``velocity_mask``). Grid conventions are `fusion.model.inputs.head_cell_centres`'.
"""

from __future__ import annotations

import math

import numpy as np

from fusion.model.config import ModelConfig
from fusion.wire.messages import CLASS_NAMES


def draw_gaussian(heatmap: np.ndarray, row: int, col: int, radius: float) -> None:
    """Max a 2D Gaussian (sigma = diameter / 6, 1 at (row, col)) into `heatmap` (rows, cols)."""
    r = max(1, math.ceil(radius))
    sigma = (2 * radius + 1) / 6
    dr, dc = np.mgrid[-r : r + 1, -r : r + 1]
    g = np.exp(-(dr**2 + dc**2) / (2 * sigma**2))
    rows, cols = heatmap.shape
    r0, r1 = max(0, row - r), min(rows, row + r + 1)
    c0, c1 = max(0, col - r), min(cols, col + r + 1)
    patch = g[r0 - row + r : r1 - row + r, c0 - col + r : c1 - col + r]
    np.maximum(heatmap[r0:r1, c0:c1], patch, out=heatmap[r0:r1, c0:c1])


def encode_targets(gt_boxes: np.ndarray, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Heatmaps (classes, rows, cols) and per-slot targets for `GT_BOX_DTYPE` boxes in the
    reference frame; boxes off the grid or of other classes are skipped."""
    rows, cols = cfg.grid_shape("head")
    k = cfg.max_objects
    heatmap = np.zeros((cfg.num_classes, rows, cols), np.float32)
    t = {
        "index": np.zeros(k, np.int64),
        "mask": np.zeros(k, np.float32),
        "offset": np.zeros((k, 2), np.float32),
        "z": np.zeros((k, 1), np.float32),
        "log_dims": np.zeros((k, 3), np.float32),
        "yaw": np.zeros((k, 2), np.float32),
        "velocity": np.zeros((k, 2), np.float32),
        "velocity_mask": np.zeros(k, np.float32),
    }
    local = {CLASS_NAMES.index(name): i for i, name in enumerate(cfg.class_names)}
    cell = cfg.head_cell_m
    n = 0
    # nearest first, so that when slots run out the far boxes are the ones left out
    for b in gt_boxes[np.argsort(np.hypot(gt_boxes["x"], gt_boxes["y"]), kind="stable")]:
        cls = local.get(int(b["class_id"]))
        fr = (cfg.x_range_m[1] - float(b["x"])) / cell
        fc = (cfg.y_range_m[1] - float(b["y"])) / cell
        if cls is None or n >= k or not (0 <= fr < rows and 0 <= fc < cols):
            continue
        row, col = int(fr), int(fc)
        radius = max(cfg.min_radius_cells, 0.5 * min(float(b["l"]), float(b["w"])) / cell)
        draw_gaussian(heatmap[cls], row, col, radius)
        t["index"][n] = row * cols + col
        t["mask"][n] = 1.0
        t["offset"][n] = (fr - row, fc - col)
        t["z"][n] = b["z"]
        t["log_dims"][n] = np.log(np.maximum([b["l"], b["w"], b["h"]], 0.05))
        t["yaw"][n] = (math.sin(b["yaw"]), math.cos(b["yaw"]))
        if np.isfinite(b["vx"]) and np.isfinite(b["vy"]):
            t["velocity"][n] = (b["vx"], b["vy"])
            t["velocity_mask"][n] = 1.0
        n += 1
    t["heatmap"] = heatmap
    return t
