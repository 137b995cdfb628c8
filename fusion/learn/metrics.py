"""Detection metrics: nuScenes-style center-distance AP and true-positive errors.

`evaluate_detections` scores detections (`DETECTION_DTYPE`) against ground truth
(`GT_BOX_DTYPE`), frame by frame, following the nuScenes detection benchmark
(``nuscenes/eval/detection/algo.py``) with the ground plane of the radar frame:

- **Matching**, per class and distance threshold: all detections of the class over all frames,
  sorted by descending score (stable, so ties keep frame order), each take the nearest
  not-yet-matched ground-truth box of that class in the same frame by centre distance in
  (x, y); it is a true positive when that distance is strictly below the threshold, else a
  false positive.
- **AP**: cumulative precision and recall; precision is linearly interpolated onto 101 recall
  points 0, 0.01 .. 1 (0 beyond the highest recall reached; no monotone envelope, as in
  nuScenes). Recall points at or below ``MIN_RECALL`` (0.1) are dropped, ``MIN_PRECISION`` (0.1)
  is subtracted and negatives clipped, and the mean is divided by ``1 - MIN_PRECISION``. Perfect
  detections give 1, none give 0. A class without ground truth has AP NaN and is left out of
  means.
- **True-positive errors** at the ``TP_THRESHOLD_M`` (2 m) matching: translation (centre
  distance in x, y, m), scale (1 - IoU of the two boxes aligned on centre and yaw), orientation
  (absolute yaw difference wrapped to [0, pi], rad) and velocity (norm of the (vx, vy)
  difference, m/s). As in nuScenes each is the running mean over true positives in score
  order, interpolated onto the recall points and averaged from recall 0.1 to the highest
  recall reached; 1 (the nuScenes worst value) when recall never passes 0.1. Ground truth with
  NaN velocity (Astyx) is skipped by the velocity error, which is NaN when no true positive has
  a velocity.
- **Range bins**: AP again with detections and ground truth both restricted to the ground
  range sqrt(x^2 + y^2) of each bin, ``[lo, hi)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fusion.errors import ConfigError
from fusion.wire.messages import CLASS_NAMES, DETECTION_DTYPE, GT_BOX_DTYPE

DEFAULT_THRESHOLDS_M: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
DEFAULT_RANGE_BINS_M: tuple[tuple[float, float], ...] = ((0.0, 20.0), (20.0, 35.0), (35.0, 50.0))
TP_THRESHOLD_M = 2.0
MIN_RECALL = 0.1
MIN_PRECISION = 0.1
TP_ERRORS = ("trans_err_m", "scale_err", "orient_err_rad", "vel_err_mps")
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)

Frame = tuple[np.ndarray, np.ndarray]


@dataclass
class ClassResult:
    """Scores of one class: AP per threshold, their mean, and the true-positive errors."""

    n_gt: int
    n_det: int
    ap: dict[float, float]
    tp_errors: dict[str, float]

    @property
    def mean_ap(self) -> float:
        return float(np.mean(list(self.ap.values()))) if self.n_gt else math.nan


@dataclass
class EvalResult:
    """What `evaluate_detections` returns; ``table()`` prints it, ``to_dict()`` serialises it."""

    thresholds_m: tuple[float, ...]
    classes: dict[str, ClassResult]
    #: "lo-hi" -> class -> mean AP over the thresholds, within that ground range.
    ap_by_range: dict[str, dict[str, float]] = field(default_factory=dict)
    n_frames: int = 0

    @property
    def mean_ap(self) -> float:
        """Mean over the classes that have ground truth of their mean AP (NaN if none has)."""
        values = [c.mean_ap for c in self.classes.values() if c.n_gt]
        return float(np.mean(values)) if values else math.nan

    def ap_at(self, threshold_m: float) -> float:
        """Mean over the classes with ground truth of the AP at one threshold."""
        values = [c.ap[threshold_m] for c in self.classes.values() if c.n_gt]
        return float(np.mean(values)) if values else math.nan

    def table(self) -> str:
        th = self.thresholds_m
        head = ["class", "n_gt", "n_det", *(f"AP@{t:g}" for t in th), "mAP", *TP_ERRORS]
        rows = [head]
        for name, c in self.classes.items():
            rows.append(
                [name, str(c.n_gt), str(c.n_det)]
                + [_fmt(c.ap[t]) for t in th]
                + [_fmt(c.mean_ap)]
                + [_fmt(c.tp_errors[k]) for k in TP_ERRORS]
            )
        rows.append(
            ["mean", "", ""] + [_fmt(self.ap_at(t)) for t in th] + [_fmt(self.mean_ap)] + [""] * 4
        )
        lines = [_align(rows)]
        if self.ap_by_range:
            range_rows = [["range_m", *self.classes]]
            for label, per_class in self.ap_by_range.items():
                range_rows.append([label] + [_fmt(per_class[n]) for n in self.classes])
            lines.append("mAP by ground range (mean over thresholds):")
            lines.append(_align(range_rows))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "n_frames": self.n_frames,
            "thresholds_m": list(self.thresholds_m),
            "mean_ap": _json_float(self.mean_ap),
            "ap_at": {f"{t:g}": _json_float(self.ap_at(t)) for t in self.thresholds_m},
            "classes": {
                name: {
                    "n_gt": c.n_gt,
                    "n_det": c.n_det,
                    "mean_ap": _json_float(c.mean_ap),
                    "ap": {f"{t:g}": _json_float(v) for t, v in c.ap.items()},
                    "tp_errors": {k: _json_float(v) for k, v in c.tp_errors.items()},
                }
                for name, c in self.classes.items()
            },
            "ap_by_range": {
                label: {n: _json_float(v) for n, v in per_class.items()}
                for label, per_class in self.ap_by_range.items()
            },
        }


def evaluate_detections(
    frames: Sequence[Frame],
    classes: Sequence[str] = CLASS_NAMES,
    thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M,
    max_range_m: float | None = None,
    range_bins_m: Sequence[tuple[float, float]] = DEFAULT_RANGE_BINS_M,
) -> EvalResult:
    """Score ``[(detections, gt_boxes), ...]`` (one pair per frame); see the module docstring.

    `classes` are names from `CLASS_NAMES` to score (others are ignored in both detections and
    ground truth); `max_range_m` drops both beyond that ground range before anything else.
    """
    unknown = [c for c in classes if c not in CLASS_NAMES]
    if unknown:
        raise ConfigError(f"unknown classes {unknown}; choose from {CLASS_NAMES}")
    thresholds = tuple(float(t) for t in thresholds_m)
    if not thresholds or min(thresholds) <= 0:
        raise ConfigError(f"thresholds_m must be positive distances, got {thresholds_m}")
    checked = [_check_frame(k, det, gt) for k, (det, gt) in enumerate(frames)]
    if max_range_m is not None:
        checked = [_within(det, gt, 0.0, max_range_m) for det, gt in checked]

    results = {}
    for name in classes:
        class_id = CLASS_NAMES.index(name)
        dets, gts = _select_class(checked, class_id)
        n_gt = sum(len(g) for g in gts)
        ap = {t: _ap(_match(dets, gts, t), n_gt) for t in thresholds}
        errors = _tp_errors(_match(dets, gts, TP_THRESHOLD_M), n_gt)
        results[name] = ClassResult(n_gt, sum(len(d) for d in dets), ap, errors)

    by_range = {}
    for lo, hi in range_bins_m:
        binned = [_within(det, gt, lo, hi) for det, gt in checked]
        per_class = {}
        for name in classes:
            dets, gts = _select_class(binned, CLASS_NAMES.index(name))
            n_gt = sum(len(g) for g in gts)
            per_class[name] = (
                float(np.mean([_ap(_match(dets, gts, t), n_gt) for t in thresholds]))
                if n_gt
                else math.nan
            )
        by_range[f"{lo:g}-{hi:g}"] = per_class
    return EvalResult(thresholds, results, by_range, len(checked))


@dataclass
class _Matches:
    """Per detection in descending-score order: score, whether matched, and the matched pair."""

    scores: np.ndarray
    is_tp: np.ndarray
    pairs: list[tuple[np.void, np.void]]


def _match(dets: list[np.ndarray], gts: list[np.ndarray], threshold_m: float) -> _Matches:
    frame_of = np.concatenate([np.full(len(d), k) for k, d in enumerate(dets)] + [np.zeros(0)])
    index_in = np.concatenate([np.arange(len(d)) for d in dets] + [np.zeros(0)]).astype(int)
    scores = np.concatenate([d["score"] for d in dets] + [np.zeros(0, np.float32)])
    order = np.argsort(-scores, kind="stable")
    taken = [np.zeros(len(g), bool) for g in gts]
    is_tp = np.zeros(len(order), bool)
    pairs = []
    for rank, j in enumerate(order):
        k = int(frame_of[j])
        det, gt = dets[k][index_in[j]], gts[k]
        if len(gt) == 0:
            continue
        distance = np.hypot(gt["x"] - det["x"], gt["y"] - det["y"])
        distance[taken[k]] = np.inf
        best = int(np.argmin(distance))
        if distance[best] < threshold_m:
            taken[k][best] = True
            is_tp[rank] = True
            pairs.append((det, gt[best]))
    return _Matches(scores[order], is_tp, pairs)


def _curves(m: _Matches, n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, confidence) at the tail of each detection in score order."""
    tp = np.cumsum(m.is_tp).astype(float)
    fp = np.cumsum(~m.is_tp).astype(float)
    return tp / n_gt, tp / np.maximum(tp + fp, 1.0), m.scores.astype(float)


def _ap(m: _Matches, n_gt: int) -> float:
    if n_gt == 0:
        return math.nan
    if len(m.scores) == 0:
        return 0.0
    recall, precision, _ = _curves(m, n_gt)
    precision = np.interp(_RECALL_POINTS, recall, precision, right=0.0)
    precision = precision[round(100 * MIN_RECALL) + 1 :] - MIN_PRECISION
    return float(np.mean(np.clip(precision, 0.0, None)) / (1.0 - MIN_PRECISION))


def _tp_errors(m: _Matches, n_gt: int) -> dict[str, float]:
    if n_gt == 0:
        return dict.fromkeys(TP_ERRORS, math.nan)
    if not m.pairs:
        return dict.fromkeys(TP_ERRORS, 1.0)
    recall, _, confidence = _curves(m, n_gt)
    confidence = np.interp(_RECALL_POINTS, recall, confidence, right=0.0)
    nonzero = np.nonzero(confidence)[0]
    last = int(nonzero[-1]) if len(nonzero) else 0
    first = round(100 * MIN_RECALL) + 1
    tp_scores = m.scores[m.is_tp].astype(float)
    errors = {}
    for key, values in _pair_errors(m.pairs).items():
        running = _nan_cummean(values)
        if last < first or running is None:
            errors[key] = 1.0 if running is not None else math.nan
            continue
        curve = np.interp(confidence[::-1], tp_scores[::-1], running[::-1])[::-1]
        errors[key] = float(np.mean(curve[first : last + 1]))
    return errors


def _pair_errors(pairs: list[tuple[np.void, np.void]]) -> dict[str, np.ndarray]:
    det = np.array([p[0] for p in pairs], dtype=DETECTION_DTYPE)
    gt = np.array([p[1] for p in pairs], dtype=GT_BOX_DTYPE)
    size_det = np.stack([det["l"], det["w"], det["h"]], axis=1).astype(float)
    size_gt = np.stack([gt["l"], gt["w"], gt["h"]], axis=1).astype(float)
    inter = np.prod(np.minimum(size_det, size_gt), axis=1)
    union = np.prod(size_det, axis=1) + np.prod(size_gt, axis=1) - inter
    yaw_diff = np.angle(np.exp(1j * (det["yaw"].astype(float) - gt["yaw"].astype(float))))
    return {
        "trans_err_m": np.hypot(det["x"] - gt["x"], det["y"] - gt["y"]).astype(float),
        "scale_err": 1.0 - inter / np.maximum(union, 1e-9),
        "orient_err_rad": np.abs(yaw_diff),
        "vel_err_mps": np.hypot(det["vx"] - gt["vx"], det["vy"] - gt["vy"]).astype(float),
    }


def _nan_cummean(values: np.ndarray) -> np.ndarray | None:
    """Running mean ignoring NaN (carried forward over leading NaNs); None if all are NaN."""
    valid = ~np.isnan(values)
    if not valid.any():
        return None
    count = np.cumsum(valid)
    running = np.nancumsum(values) / np.maximum(count, 1)
    running[count == 0] = values[valid][0]
    return running


def _check_frame(k: int, det: np.ndarray, gt: np.ndarray) -> Frame:
    if not isinstance(det, np.ndarray) or det.dtype != DETECTION_DTYPE:
        raise ConfigError(f"frame {k}: detections must be a DETECTION_DTYPE array")
    if not isinstance(gt, np.ndarray) or gt.dtype != GT_BOX_DTYPE:
        raise ConfigError(f"frame {k}: ground truth must be a GT_BOX_DTYPE array")
    return det.reshape(-1), gt.reshape(-1)


def _within(det: np.ndarray, gt: np.ndarray, lo_m: float, hi_m: float) -> Frame:
    r_det = np.hypot(det["x"], det["y"])
    r_gt = np.hypot(gt["x"], gt["y"])
    return det[(r_det >= lo_m) & (r_det < hi_m)], gt[(r_gt >= lo_m) & (r_gt < hi_m)]


def _select_class(frames: list[Frame], class_id: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return (
        [det[det["class_id"] == class_id] for det, _ in frames],
        [gt[gt["class_id"] == class_id] for _, gt in frames],
    )


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _align(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    )
