"""``fusion eval``: run a trained model over held-out frames and score it.

- `predict` runs a model over encoded frames (`fusion.model.data`) in one mode and decodes them;
- `score` applies the evaluation protocol of ``DESIGN.md`` (`fusion.baselines.
  filter_gt_for_eval`: ground truth within 50 m whose centre projects into the image) and the
  nuScenes-style metrics of `fusion.metrics` (AP at 0.5/1/2/4 m, true-positive errors, range
  bins);
- `ablation` scores fused, camera-only and radar-only with the same weights on the same frames,
  next to the non-learned DBSCAN radar baseline;
- `fault_auroc` injects sensor faults (radar blacked out, radar noise, camera black, blurred,
  over-exposed) and reports how well the VAE health score separates each from clean frames
  (AUROC, 0.5 = chance, 1 = perfect).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from fusion.metrics import EvalResult, evaluate_detections
from fusion.model.data import collate, radar_point_inputs, radar_raster
from fusion.model.decode import decode
from fusion.model.network import FusionNet, present_flags
from fusion.perception.geometry import CameraModel
from fusion.perception.preprocess import IMAGE_MEAN, IMAGE_STD

log = logging.getLogger(__name__)

MAX_RANGE_M = 50.0
FAULTS = ("radar_blackout", "radar_noise", "camera_black", "camera_blur", "camera_overexposed")


def input_camera(item: dict) -> CameraModel:
    """The camera at the network's input size that an encoded frame was made with."""
    h, w = item["image"].shape[1:]
    return CameraModel(item["K"], w, h, item["ref_to_cam"], np.zeros(5))


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
    from fusion.baselines import filter_detections_for_eval, filter_gt_for_eval

    frames = [
        (
            filter_detections_for_eval(det, it["camera"], MAX_RANGE_M),
            filter_gt_for_eval(it["gt_boxes"], it["camera"], MAX_RANGE_M),
        )
        for det, it in zip(detections, items, strict=True)
    ]
    return evaluate_detections(frames, classes, max_range_m=MAX_RANGE_M)


def baseline_detections(items: Sequence[dict]) -> list[np.ndarray]:
    from fusion.baselines import radar_cluster_baseline

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
    """Probability that a positive scores above a negative (ties count half): the area under the
    ROC curve, by the Mann-Whitney U statistic."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    if not len(neg) or not len(pos):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


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


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fusion.train import add_data_arguments

    parser.add_argument(
        "--weights", type=Path, default=None, help="checkpoint (default: the committed sim weights)"
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--part",
        default="test",
        choices=("train", "val", "test"),
        help="Astyx split part to evaluate (with --astyx)",
    )
    parser.add_argument("--mode", default="fused", choices=("fused", "camera_only", "radar_only"))
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="fused vs camera-only vs radar-only vs the DBSCAN radar baseline",
    )
    parser.add_argument("--faults", action="store_true", help="AUROC of the VAE health score")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--eval-precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: what Detector uses on this CPU (bf16 where native)",
    )


def run(args: argparse.Namespace) -> int:
    from fusion.model.detector import DEFAULT_WEIGHTS, load_checkpoint
    from fusion.train import data_sets, resolve_precision

    torch.set_num_threads(args.threads)
    model, state = load_checkpoint(args.weights or DEFAULT_WEIGHTS)
    cfg = model.cfg
    items, what = data_sets(args, cfg, (args.part,))[args.part]
    print(f"{args.weights or DEFAULT_WEIGHTS} (trained on {state.get('data', '?')})")
    print(f"evaluating on {what}: {len(items)} frames")
    precision = resolve_precision(args.eval_precision)
    report: dict = {
        "weights": str(args.weights or DEFAULT_WEIGHTS),
        "data": what,
        "precision": precision,
    }
    started = time.monotonic()
    if args.ablation:
        results = ablation(model, items, cfg.class_names, precision=precision)
    else:
        detections = predict(model, items, args.mode, precision=precision)[0]
        results = {args.mode: score(items, detections, cfg.class_names)}
    for name, result in results.items():
        print(f"\n== {name}\n{result.table()}")
    report["results"] = {name: r.to_dict() for name, r in results.items()}
    if args.faults:
        faults = fault_auroc(model, items, precision=precision)
        print("\n== VAE health score: AUROC faulty vs clean")
        for fault, v in faults.items():
            print(
                f"{fault:20s} AUROC {v['auroc']:.3f}  score clean {v['clean_mean']:.3f} "
                f"faulty {v['fault_mean']:.3f}"
            )
        report["faults"] = faults
    report["seconds"] = time.monotonic() - started
    print(f"\n({precision}, {report['seconds']:.0f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0
