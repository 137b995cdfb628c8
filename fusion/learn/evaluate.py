"""Evaluation: run a trained model over held-out frames and score it.

- `predict` runs a model over a `FeatureSet` (cached backbone maps, the serving path's radar
  raster and lift grid) in one mode, decodes the detections and reports each frame's health;
- `score` applies the evaluation protocol of ``DESIGN.md`` (`fusion.learn.baselines.
  filter_gt_for_eval`: ground truth within 50 m whose centre projects into the image) and the
  nuScenes-style metrics of `fusion.learn.metrics` (AP at 0.5/1/2/4 m, true-positive errors,
  range bins);
- `ablation` scores fused, camera-only and radar-only with the same weights on the same frames,
  next to the non-learned DBSCAN radar baseline;
- `fault_auroc` injects sensor faults into the frames' raw sensor data (radar blackout, radar
  noise, camera black, blurred, over-exposed, frozen) and reports how well the health score
  (the VAE and the cues of `fusion.model.health`) separates each from clean frames, as AUROC
  (0.5 = chance, 1 = perfect), for the combined score and for the VAE alone.
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
from fusion.learn.batches import collate, sample
from fusion.learn.data import LabelledFrame
from fusion.learn.features import FeatureSet
from fusion.learn.metrics import EvalResult, evaluate_detections
from fusion.model.config import ModelConfig
from fusion.model.decode import decode
from fusion.model.health import HealthCues, health_report
from fusion.model.inputs import LiftGridCache, encode_image, encode_inputs
from fusion.model.network import FusionNet, present_flags
from fusion.perception.frame import FrameInputs

log = logging.getLogger(__name__)

MAX_RANGE_M = 50.0
FAULTS = (
    "radar_blackout",
    "radar_noise",
    "camera_black",
    "camera_blur",
    "camera_overexposed",
    "camera_frozen",
)
MODES = ("fused", "camera_only", "radar_only")
#: Blur of the ``camera_blur`` fault: Gaussian sigma in pixels of the network's input.
BLUR_SIGMA_INPUT_PX = 4.0


@torch.inference_mode()
def predict(
    model: FusionNet,
    features: FeatureSet,
    mode: str = "fused",
    batch_size: int = 16,
) -> tuple[list[np.ndarray], list[dict[str, float]]]:
    """Detections per frame and each frame's health report (frames in order, so the frozen-
    camera cue compares each with the one before)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    grids = LiftGridCache(model.cfg)
    cues = HealthCues()
    detections: list[np.ndarray] = []
    health: list[dict[str, float]] = []
    for start in range(0, len(features), batch_size):
        indices = range(start, min(len(features), start + batch_size))
        samples = [sample(features, i, model.cfg, grids=grids) for i in indices]
        b = collate(samples, device)
        out = model.from_early(
            b["f8"],
            b["f16"],
            b["f32"],
            b["raster"],
            b["grid"],
            present_flags(mode, len(samples), device),
        )
        detections += decode({k: v.cpu() for k, v in out.items()}, model.cfg)
        for k, s in enumerate(samples):
            image = _image_input(features.frames[indices[k]], model.cfg)
            health.append(_health(cues, image, s["raster"], out["vae_score"][k], mode, model.cfg))
    model.train(was_training)
    return detections, health


def _image_input(frame: LabelledFrame, cfg: ModelConfig) -> np.ndarray:
    return encode_image(frame.inputs.image_bgr, cfg)


def _health(
    cues: HealthCues,
    image: np.ndarray,
    raster: np.ndarray,
    vae_score: torch.Tensor,
    mode: str,
    cfg: ModelConfig,
) -> dict[str, float]:
    values = cues({"image": image, "raster": raster}, mode)
    if mode == "fused":
        values["vae"] = float(vae_score)
    return health_report(values, cfg)


def score(
    frames: Sequence[LabelledFrame], detections: Sequence[np.ndarray], classes: Sequence[str]
) -> EvalResult:
    """Score one frame's detections per frame under the DESIGN.md protocol: ground truth and
    detections within 50 m ground range whose centre projects into the camera image."""
    pairs = [
        (
            filter_detections_for_eval(det, f.inputs.camera, MAX_RANGE_M),
            filter_gt_for_eval(f.boxes, f.inputs.camera, MAX_RANGE_M),
        )
        for det, f in zip(detections, frames, strict=True)
    ]
    return evaluate_detections(pairs, classes, max_range_m=MAX_RANGE_M)


def baseline_detections(frames: Sequence[LabelledFrame]) -> list[np.ndarray]:
    """The DBSCAN radar baseline on the same (compensated, reference-frame) points."""
    return [radar_cluster_baseline(f.inputs.points) for f in frames]


def ablation(
    model: FusionNet, features: FeatureSet, classes: Sequence[str], with_baseline: bool = True
) -> dict[str, EvalResult]:
    """Fused / camera-only / radar-only (same weights, same frames) and the radar baseline."""
    results = {
        mode: score(features.frames, predict(model, features, mode)[0], classes) for mode in MODES
    }
    if with_baseline:
        results["radar_dbscan_baseline"] = score(
            features.frames, baseline_detections(features.frames), classes
        )
    return results


# --------------------------------------------------------------------------- faults


def inject_fault(
    frame: FrameInputs,
    previous: FrameInputs,
    fault: str,
    rng: np.random.Generator,
    input_w: int = 512,
) -> FrameInputs:
    """A copy of a frame with one sensor fault in its raw data; `previous` is the frame before
    it (what a frozen camera keeps showing); `input_w` is the network's input width (the blur
    is set in its pixels)."""
    image, points = frame.image_bgr, frame.points
    if fault == "camera_black":
        image = np.zeros_like(image)
    elif fault == "camera_blur":  # 4 px at the network's input size (defocus, a dirty lens)
        sigma = BLUR_SIGMA_INPUT_PX * image.shape[1] / input_w
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)
    elif fault == "camera_overexposed":
        image = np.clip(image.astype(np.float32) * 3.0 + 60.0, 0, 255).astype(np.uint8)
    elif fault == "camera_frozen":
        image = previous.image_bgr
    elif fault == "radar_blackout":
        points = points[:0]
    elif fault == "radar_noise":
        points = points.copy()
        n = max(200, 2 * len(points))
        noise = np.zeros(n, points.dtype)
        noise["x"] = rng.uniform(2, 60, n)
        noise["y"] = rng.uniform(-20, 20, n)
        noise["z"] = rng.uniform(-2, 3, n)
        noise["v_r"] = rng.normal(0, 5, n)
        noise["rcs"] = rng.uniform(points["rcs"].min(initial=0), points["rcs"].max(initial=60), n)
        points["x"] += rng.normal(0, 1.0, len(points)).astype(np.float32)
        points["y"] += rng.normal(0, 1.0, len(points)).astype(np.float32)
        points = np.concatenate([points, noise])
    else:
        raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")
    return FrameInputs(image, points, frame.camera)


@torch.inference_mode()
def health_scores(
    model: FusionNet, frames: Sequence[FrameInputs], previous: Sequence[FrameInputs]
) -> list[dict[str, float]]:
    """Each frame's fused health report through the full serving path (raw image to network),
    each judged right after its `previous` frame (so a fault starts at that frame)."""
    model.eval()
    cues = HealthCues()
    grids = LiftGridCache(model.cfg)
    reports = []
    for frame, before in zip(frames, previous, strict=True):
        cues.prime(encode_image(before.image_bgr, model.cfg))
        inputs = encode_inputs(frame, model.cfg, grids)
        batch = {k: torch.from_numpy(v[None]) for k, v in inputs.items()}
        out = model(batch["image"], batch["raster"], batch["grid"], present_flags("fused", 1))
        reports.append(
            _health(
                cues, inputs["image"], inputs["raster"], out["vae_score"][0], "fused", model.cfg
            )
        )
    return reports


def auroc(clean: Sequence[float], faulty: Sequence[float]) -> float:
    """Area under the ROC curve of a score separating faulty (positive) from clean frames;
    NaN when either side is empty."""
    if not len(clean) or not len(faulty):
        return float("nan")
    labels = np.r_[np.zeros(len(clean)), np.ones(len(faulty))]
    return float(roc_auc_score(labels, np.r_[clean, faulty]))


def fault_auroc(
    model: FusionNet,
    frames: Sequence[LabelledFrame],
    faults: Sequence[str] = FAULTS,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per fault: AUROC of the health score and of the VAE alone (faulty vs clean frames), the
    share of faulty frames flagged, and the share of clean frames flagged."""
    rng = np.random.default_rng(seed)
    clean_inputs = [f.inputs for f in frames]
    previous = [clean_inputs[max(0, i - 1)] for i in range(len(clean_inputs))]
    clean = health_scores(model, clean_inputs, previous)
    results = {}
    for fault in faults:
        faulty_inputs = [
            inject_fault(f, before, fault, rng, model.cfg.input_w)
            for f, before in zip(clean_inputs, previous, strict=True)
        ]
        faulty = health_scores(model, faulty_inputs, previous)
        results[fault] = {
            "auroc": auroc([c["score"] for c in clean], [c["score"] for c in faulty]),
            "auroc_vae": auroc([c["vae"] for c in clean], [c["vae"] for c in faulty]),
            "flagged": float(np.mean([c["ok"] == 0.0 for c in faulty])),
            "clean_flagged": float(np.mean([c["ok"] == 0.0 for c in clean])),
        }
    return results
