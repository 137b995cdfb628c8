"""Evaluation: run a trained model over held-out frames and score it.

- `predict` runs a model over encoded frames (`fusion.model.data`) in one mode and decodes them;
- `score` applies the evaluation protocol of ``DESIGN.md`` (`fusion.learn.baselines.
  filter_gt_for_eval`: ground truth within 50 m whose centre projects into the image) and the
  nuScenes-style metrics of `fusion.learn.metrics` (AP at 0.5/1/2/4 m, true-positive errors, range
  bins);
- `ablation` scores fused, camera-only and radar-only with the same weights on the same frames,
  next to the non-learned DBSCAN radar baseline;
- `fault_auroc` injects sensor faults (radar blacked out, radar noise, camera black, blurred,
  over-exposed) and reports how well the VAE health score separates each from clean frames
  (AUROC, 0.5 = chance, 1 = perfect).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from fusion.learn.baselines import (
    filter_detections_for_eval,
    filter_gt_for_eval,
    radar_cluster_baseline,
)
from fusion.learn.data import input_camera
from fusion.learn.metrics import EvalResult, evaluate_detections
from fusion.model.data import collate, radar_point_inputs, radar_raster
from fusion.model.decode import decode
from fusion.model.network import FusionNet, present_flags
from fusion.perception.preprocess import IMAGE_MEAN, IMAGE_STD

log = logging.getLogger(__name__)

MAX_RANGE_M = 50.0
FAULTS = ("radar_blackout", "radar_noise", "camera_black", "camera_blur", "camera_overexposed")


@torch.no_grad()
def predict(
    model: FusionNet,
    items: Sequence[dict],
    mode: str = "fused",
    batch_size: int = 8,
    precision: str = "fp32",
) -> tuple[list[np.ndarray], np.ndarray]:
    """Detections per frame and the (n,) health scores, in eval mode; ``precision="bf16"``
    runs under bfloat16 autocast (the CPU default of `Detector`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    detections: list[np.ndarray] = []
    health: list[np.ndarray] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        b = collate(chunk, device)
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            out = model(
                b["image"],
                b["point_features"],
                b["point_cells"],
                b["point_valid"],
                b["raster"],
                present_flags(mode, len(chunk), device),
            )
        points = None if mode == "camera_only" else [it["points"] for it in chunk]
        detections += decode(out, [input_camera(it) for it in chunk], model.cfg, points)
        health.append(out["health_score"].float().cpu().numpy())
    model.train(was_training)
    return detections, np.concatenate(health) if health else np.zeros(0)


def score(
    items: Sequence[dict], detections: Sequence[np.ndarray], classes: Sequence[str]
) -> EvalResult:
    """Score one frame's detections per item under the DESIGN.md protocol: ground truth and
    detections within 50 m ground range whose centre projects into the camera image."""
    frames = [
        (
            filter_detections_for_eval(det, it["camera"], MAX_RANGE_M),
            filter_gt_for_eval(it["gt_boxes"], it["camera"], MAX_RANGE_M),
        )
        for det, it in zip(detections, items, strict=True)
    ]
    return evaluate_detections(frames, classes, max_range_m=MAX_RANGE_M)


def baseline_detections(items: Sequence[dict]) -> list[np.ndarray]:
    return [radar_cluster_baseline(it["points"]) for it in items]


def ablation(
    model: FusionNet,
    items: Sequence[dict],
    classes: Sequence[str],
    with_baseline: bool = True,
    precision: str = "fp32",
) -> dict[str, EvalResult]:
    """Fused / camera-only / radar-only (same weights, same frames) and the radar baseline."""
    results = {
        mode: score(items, predict(model, items, mode, precision=precision)[0], classes)
        for mode in ("fused", "camera_only", "radar_only")
    }
    if with_baseline:
        results["radar_dbscan_baseline"] = score(items, baseline_detections(items), classes)
    return results


# --------------------------------------------------------------------------- faults


def _image_to_uint8(image: np.ndarray) -> np.ndarray:
    """Normalised (3, H, W) RGB back to (H, W, 3) uint8 RGB."""
    mean = np.asarray(IMAGE_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGE_STD, np.float32)[:, None, None]
    pixels = (image.astype(np.float32) * std + mean) * 255.0
    return np.clip(pixels, 0, 255).round().astype(np.uint8).transpose(1, 2, 0)


def _uint8_to_image(pixels: np.ndarray) -> np.ndarray:
    mean = np.asarray(IMAGE_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGE_STD, np.float32)[:, None, None]
    return ((pixels.transpose(2, 0, 1).astype(np.float32) / 255.0 - mean) / std).astype(np.float16)


def inject_fault(item: dict, fault: str, cfg, rng: np.random.Generator) -> dict:
    """A copy of an encoded frame with one sensor fault applied to its inputs."""
    out = dict(item)
    if fault.startswith("camera_"):
        pixels = _image_to_uint8(item["image"])
        if fault == "camera_black":
            pixels = np.zeros_like(pixels)
        elif fault == "camera_blur":
            pixels = cv2.GaussianBlur(pixels, (0, 0), sigmaX=4.0)
        elif fault == "camera_overexposed":
            pixels = np.clip(pixels.astype(np.float32) * 3.0 + 60.0, 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"unknown fault {fault!r}")
        out["image"] = _uint8_to_image(pixels)
        return out
    points = item["points"].copy()
    if fault == "radar_blackout":
        points = points[:0]
    elif fault == "radar_noise":
        n = max(200, 2 * len(points))
        noise = np.zeros(n, points.dtype)
        noise["x"] = rng.uniform(2, 60, n)
        noise["y"] = rng.uniform(-20, 20, n)
        noise["z"] = rng.uniform(-2, 3, n)
        noise["v_r"] = rng.normal(0, 5, n)
        noise["rcs"] = rng.uniform(points["rcs"].min(initial=0), points["rcs"].max(initial=20), n)
        points["x"] += rng.normal(0, 1.0, len(points))
        points["y"] += rng.normal(0, 1.0, len(points))
        points = np.concatenate([points, noise])
    else:
        raise ValueError(f"unknown fault {fault!r}")
    camera = input_camera(item)
    out["point_features"], out["point_cells"] = radar_point_inputs(points, camera, cfg)
    out["raster"] = radar_raster(points, camera, cfg).astype(np.float16)
    out["points"] = points
    return out


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of positives (label 1) against negatives (label 0): the chance
    a positive scores above a negative, ties counting half. NaN when either side is empty."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    if not len(neg) or not len(pos):
        return float("nan")
    labels = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])
    return float(roc_auc_score(labels, np.concatenate([neg, pos])))


def fault_auroc(
    model: FusionNet,
    items: Sequence[dict],
    faults: Sequence[str] = FAULTS,
    seed: int = 0,
    precision: str = "fp32",
) -> dict[str, dict[str, float]]:
    """Per fault: AUROC of the health score (faulty vs clean frames), and the mean scores."""
    rng = np.random.default_rng(seed)

    def health(m: FusionNet, its: Sequence[dict]) -> np.ndarray:
        return predict(m, its, "fused", precision=precision)[1]

    clean = health(model, items)
    results = {}
    for fault in faults:
        faulty = health(model, [inject_fault(it, fault, model.cfg, rng) for it in items])
        results[fault] = {
            "auroc": auroc(clean, faulty),
            "clean_mean": float(np.mean(clean)),
            "fault_mean": float(np.mean(faulty)),
        }
    return results
