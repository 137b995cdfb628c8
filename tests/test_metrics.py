"""Hand-computed cases for the nuScenes-style detection metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fusion.errors import ConfigError
from fusion.learn.metrics import evaluate_detections
from fusion.wire.messages import CLASS_NAMES, DETECTION_DTYPE, GT_BOX_DTYPE

CAR = CLASS_NAMES.index("car")
TRUCK = CLASS_NAMES.index("truck")


def gt_boxes(*xy: tuple[float, float], class_id: int = CAR, **fields: float) -> np.ndarray:
    boxes = np.zeros(len(xy), dtype=GT_BOX_DTYPE)
    boxes["class_id"] = class_id
    boxes["x"], boxes["y"] = np.array(xy, dtype=float).reshape(-1, 2).T
    boxes["l"], boxes["w"], boxes["h"] = 4.0, 1.8, 1.5
    for name, value in fields.items():
        boxes[name] = value
    return boxes


def dets(*xys: tuple[float, float, float], class_id: int = CAR, **fields: float) -> np.ndarray:
    """Detections from (x, y, score) triples."""
    out = np.zeros(len(xys), dtype=DETECTION_DTYPE)
    out["class_id"] = class_id
    out["x"], out["y"], out["score"] = np.array(xys, dtype=float).reshape(-1, 3).T
    out["l"], out["w"], out["h"] = 4.0, 1.8, 1.5
    for name, value in fields.items():
        out[name] = value
    return out


def as_dets(gt: np.ndarray, score: float = 0.9) -> np.ndarray:
    out = np.zeros(len(gt), dtype=DETECTION_DTYPE)
    for name in ("class_id", "x", "y", "z", "l", "w", "h", "yaw", "vx", "vy"):
        out[name] = gt[name]
    out["score"] = score
    return out


def test_perfect_detections_score_one_and_zero_errors() -> None:
    frames = []
    for k in range(5):
        gt = np.concatenate([gt_boxes((10 + k, 2), (30, -3)), gt_boxes((15, 0), class_id=TRUCK)])
        frames.append((as_dets(gt), gt))
    result = evaluate_detections(frames)
    assert result.classes["car"].ap == pytest.approx({0.5: 1.0, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0})
    assert result.classes["truck"].mean_ap == pytest.approx(1.0)
    assert math.isnan(result.classes["pedestrian"].mean_ap)  # no ground truth: left out
    assert result.mean_ap == pytest.approx(1.0)
    errors = result.classes["car"].tp_errors
    assert errors["trans_err_m"] == pytest.approx(0.0)
    assert errors["scale_err"] == pytest.approx(0.0)
    assert errors["orient_err_rad"] == pytest.approx(0.0)
    assert errors["vel_err_mps"] == pytest.approx(0.0)


def test_offset_counts_at_one_metre_not_at_half() -> None:
    gt = gt_boxes((20, 0))
    result = evaluate_detections([(dets((20.7, 0, 0.8)), gt)])
    ap = result.classes["car"].ap
    assert ap[0.5] == 0.0
    assert [ap[1.0], ap[2.0], ap[4.0]] == pytest.approx([1.0, 1.0, 1.0])
    assert result.classes["car"].mean_ap == pytest.approx(0.75)
    assert result.classes["car"].tp_errors["trans_err_m"] == pytest.approx(0.7, abs=1e-5)


def test_score_ordering_matters() -> None:
    # One true and one false detection in each of two frames; only the order changes.
    gt = gt_boxes((10, 0))
    good_first = [(dets((10, 0, 0.9), (30, 5, 0.1)), gt) for _ in range(2)]
    bad_first = [(dets((10, 0, 0.1), (30, 5, 0.9)), gt) for _ in range(2)]
    ap_good = evaluate_detections(good_first).classes["car"].ap[2.0]
    ap_bad = evaluate_detections(bad_first).classes["car"].ap[2.0]
    # TP, TP, FP, FP: full recall, but as in nuScenes the precision at recall 1 is the last
    # one reached there (1/2), so AP is just under 1.
    assert ap_good == pytest.approx((89 * 0.9 + 0.4) / 90 / 0.9)
    # Score order FP, FP, TP, TP: (recall, precision) = (0, 0), (0, 0), (0.5, 1/3), (1, 1/2).
    recall = np.linspace(0, 1, 101)[11:]
    precision = np.interp(recall, [0, 0, 0.5, 1.0], [0, 0, 1 / 3, 0.5])
    expected = np.mean(np.clip(precision - 0.1, 0, None)) / 0.9
    assert ap_bad == pytest.approx(expected)
    assert ap_bad < ap_good


def test_a_box_matches_only_once_and_missed_gt_lowers_recall() -> None:
    gt = gt_boxes((10, 0), (40, 0))
    # Two detections on the first box (one is a duplicate -> FP); second box missed.
    result = evaluate_detections([(dets((10, 0, 0.9), (10.1, 0, 0.8)), gt)])
    recall = np.linspace(0, 1, 101)[11:]
    precision = np.interp(recall, [0.5, 0.5], [1.0, 0.5], right=0.0)
    expected = np.mean(np.clip(precision - 0.1, 0, None)) / 0.9
    assert result.classes["car"].ap[2.0] == pytest.approx(expected)
    assert 0.3 < expected < 0.5


def test_greedy_matching_takes_nearest_unmatched_box() -> None:
    gt = gt_boxes((10, 0), (11.5, 0))
    # The top detection sits between the boxes, nearer the first; the second then takes the
    # other box at 1.2 m, so at 2 m both match and at 1 m only the first.
    result = evaluate_detections([(dets((10.6, 0, 0.9), (10.3, 0, 0.5)), gt)])
    assert result.classes["car"].ap[2.0] == pytest.approx(1.0)
    assert result.classes["car"].ap[1.0] < 1.0


def test_empty_frames_and_no_detections() -> None:
    empty_det = np.zeros(0, DETECTION_DTYPE)
    empty_gt = np.zeros(0, GT_BOX_DTYPE)
    nothing = evaluate_detections([(empty_det, empty_gt)] * 3)
    assert math.isnan(nothing.mean_ap)
    misses = evaluate_detections([(empty_det, gt_boxes((5, 0)))])
    assert misses.classes["car"].mean_ap == 0.0
    assert misses.classes["car"].tp_errors["trans_err_m"] == 1.0
    false_only = evaluate_detections([(dets((5, 0, 0.5)), empty_gt), (empty_det, gt_boxes((5, 0)))])
    assert false_only.classes["car"].mean_ap == 0.0
    assert evaluate_detections([]).n_frames == 0


def test_detections_of_another_frame_do_not_match() -> None:
    result = evaluate_detections(
        [
            (dets((10, 0, 0.9)), np.zeros(0, GT_BOX_DTYPE)),
            (np.zeros(0, DETECTION_DTYPE), gt_boxes((10, 0))),
        ]
    )
    assert result.classes["car"].mean_ap == 0.0


def test_class_must_agree() -> None:
    result = evaluate_detections([(dets((10, 0, 0.9), class_id=TRUCK), gt_boxes((10, 0)))])
    assert result.classes["car"].mean_ap == 0.0
    assert math.isnan(result.classes["truck"].mean_ap)
    assert result.classes["truck"].n_det == 1


def test_tp_errors_scale_orientation_velocity() -> None:
    gt = gt_boxes((10, 0), yaw=0.1, vx=2.0, vy=0.0)
    det = dets((10, 0, 0.9), yaw=0.1 + np.pi, vx=0.0, vy=0.0)
    det["l"] = 2.0  # half the length: aligned IoU 0.5
    errors = evaluate_detections([(det, gt)]).classes["car"].tp_errors
    assert errors["scale_err"] == pytest.approx(0.5)
    assert errors["orient_err_rad"] == pytest.approx(np.pi, abs=1e-5)
    assert errors["vel_err_mps"] == pytest.approx(2.0)


def test_nan_ground_truth_velocity_gives_nan_velocity_error() -> None:
    gt = gt_boxes((10, 0), vx=np.nan, vy=np.nan)
    errors = evaluate_detections([(as_dets(gt), gt)]).classes["car"].tp_errors
    assert math.isnan(errors["vel_err_mps"])
    assert errors["trans_err_m"] == pytest.approx(0.0)


def test_range_filter_and_bins() -> None:
    gt = gt_boxes((10, 0), (45, 0))
    det = dets((10, 0, 0.9))  # the far car is missed
    full = evaluate_detections([(det, gt)])
    assert full.classes["car"].mean_ap < 1.0
    assert full.ap_by_range["0-20"]["car"] == pytest.approx(1.0)
    assert full.ap_by_range["35-50"]["car"] == 0.0
    assert math.isnan(full.ap_by_range["20-35"]["car"])
    near = evaluate_detections([(det, gt)], max_range_m=30.0)
    assert near.classes["car"].mean_ap == pytest.approx(1.0)


def test_table_and_dict() -> None:
    gt = gt_boxes((10, 0))
    result = evaluate_detections([(dets((10.7, 0, 0.9)), gt)], classes=("car",))
    text = result.table()
    assert "AP@0.5" in text and "car" in text and "0.750" in text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["classes"]["car"]["ap"]["1"] == pytest.approx(1.0)
    assert data["mean_ap"] == pytest.approx(0.75)
    assert list(data["classes"]) == ["car"]


def test_bad_input_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown classes"):
        evaluate_detections([], classes=("bus",))
    with pytest.raises(ConfigError, match="DETECTION_DTYPE"):
        evaluate_detections([(np.zeros(1), np.zeros(0, GT_BOX_DTYPE))])
    with pytest.raises(ConfigError, match="thresholds_m"):
        evaluate_detections([], thresholds_m=(0.0,))
