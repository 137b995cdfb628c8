"""Training loop, checkpoints and resume, the evaluation (ablation, fault AUROC) and the data
adapters, on tiny synthetic frames; the Astyx split where the real data is present."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.learn.train import EarlyStopping, modality_flags, train
from fusion.model import FusionNet, load_checkpoint, synthetic
from fusion.model.data import collate, encode_sample, samples_from_messages
from fusion.model.losses import total_loss
from fusion.model.network import present_flags
from fusion.model.synthetic import tiny_config
from fusion.wire.messages import Calibration, CameraFrame, GroundTruth, RadarScan

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "astyx_hires2019"


def items_of(cfg, n: int, seed: int, prefix: str = "s") -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        encode_sample(synthetic.sample(rng, 3, 320, 160, key=f"{prefix}/{i}"), cfg)
        for i in range(n)
    ]


def test_a_few_steps_reduce_the_loss_on_a_tiny_batch():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = FusionNet(cfg)
    b = collate(items_of(cfg, 4, 0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    present = present_flags("fused", 4)
    losses = []
    for _ in range(8):
        out = model(
            b["image"],
            b["point_features"],
            b["point_cells"],
            b["point_valid"],
            b["raster"],
            present,
        )
        loss, _ = total_loss(out, b["targets"], cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_modality_dropout_rates():
    cfg = tiny_config(camera_dropout=0.2, radar_dropout=0.3)
    flags = modality_flags(20000, cfg, torch.Generator().manual_seed(0))
    assert flags.sum(1).min() >= 1  # never both dropped
    assert abs((flags[:, 0] == 0).float().mean() - 0.2) < 0.02
    assert abs((flags[:, 1] == 0).float().mean() - 0.3) < 0.02


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.1) and stopper.update(0.2)
    assert not stopper.update(0.2) and not stopper.should_stop
    assert not stopper.update(0.15) and stopper.should_stop


@pytest.mark.slow
def test_train_writes_checkpoints_and_log_and_resumes(tmp_path):
    cfg = tiny_config(class_names=("car",))
    train_items, val_items = items_of(cfg, 6, 0), items_of(cfg, 3, 1, "v")
    kwargs = {"batch_size": 3, "lr": 3e-3, "patience": 5, "seed": 0, "progress": False}
    first = train(cfg, train_items, val_items, tmp_path, epochs=2, **kwargs)
    assert first.epochs_run == 2 and (tmp_path / "best.pt").exists()
    _, state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1 and {"optimizer", "early_stopping", "generator"} <= set(state)
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3  # header + 2 epochs
    resumed = train(
        tiny_config(class_names=("car",)),
        train_items,
        val_items,
        tmp_path,
        epochs=3,
        resume=True,
        **kwargs,
    )
    assert resumed.epochs_run == 3
    _, state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 4
    model, best = load_checkpoint(tmp_path / "best.pt")
    assert model.cfg.point_std != tiny_config().point_std  # statistics from the training data
    assert math.isfinite(best["best_metric"])


def test_ablation_scores_every_mode_and_the_baseline_on_the_same_frames():
    from fusion.learn.evaluate import ablation

    cfg = tiny_config(class_names=("car",))
    items = items_of(cfg, 2, 4)
    results = ablation(FusionNet(cfg), items, ("car",))
    assert set(results) == {"fused", "camera_only", "radar_only", "radar_dbscan_baseline"}
    n_gt = {r.classes["car"].n_gt for r in results.values()}
    assert n_gt == {6}  # 3 cars per frame, all in range and in view
    for r in results.values():
        assert 0.0 <= r.mean_ap <= 1.0


def test_auroc_hand_cases():
    from fusion.learn.evaluate import auroc

    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert auroc(np.array([0.1, 0.3]), np.array([0.2, 0.4])) == 0.75
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5


def test_fault_injection_changes_the_right_inputs_and_scores_are_deterministic():
    from fusion.learn.evaluate import FAULTS, fault_auroc, inject_fault

    cfg = tiny_config(class_names=("car",))
    item = items_of(cfg, 1, 5)[0]
    rng = np.random.default_rng(0)
    for fault in FAULTS:
        faulty = inject_fault(item, fault, cfg, rng)
        image_changed = not np.array_equal(faulty["image"], item["image"])
        assert image_changed == fault.startswith("camera_"), fault
    assert len(inject_fault(item, "radar_blackout", cfg, rng)["point_cells"]) == 0
    model = FusionNet(cfg).eval()
    a = fault_auroc(model, items_of(cfg, 3, 6))
    b = fault_auroc(model, items_of(cfg, 3, 6))
    assert a == b and set(a) == set(FAULTS)
    assert all(0.0 <= v["auroc"] <= 1.0 and math.isfinite(v["fault_mean"]) for v in a.values())


def test_messages_adapter_pairs_nearest_radar_scan_and_ground_truth():
    rng = np.random.default_rng(0)
    s = synthetic.sample(rng, 2, 320, 160)
    calib = Calibration(
        sensor_id="cam",
        sensor_to_ref=s.camera.cam_to_ref,
        intrinsics=s.camera.K,
        distortion=np.zeros(5),
        width_px=320,
        height_px=160,
    )
    far_points = s.points.copy()
    far_points["x"] += 100
    stream = [
        ("calibration", calib),
        ("radar", RadarScan(points=far_points, capture_ns=0, sensor_id="radar")),
        ("camera", CameraFrame(image=s.image_bgr, capture_ns=90_000_000, sensor_id="cam", seq=7)),
        ("ground_truth", GroundTruth(boxes=s.gt_boxes, capture_ns=90_000_000)),
        ("radar", RadarScan(points=s.points, capture_ns=100_000_000, sensor_id="radar")),
        ("camera", CameraFrame(image=s.image_bgr, capture_ns=900_000_000, sensor_id="cam")),
    ]
    samples = list(samples_from_messages(stream, sequence="d"))
    assert len(samples) == 1  # the second frame has no scan within 100 ms
    assert samples[0].key == "d/7"
    np.testing.assert_array_equal(samples[0].points, s.points)
    np.testing.assert_array_equal(samples[0].gt_boxes, s.gt_boxes)
    np.testing.assert_allclose(samples[0].camera.ref_to_cam, s.camera.ref_to_cam, atol=1e-12)


@pytest.mark.realdata
@pytest.mark.skipif(not REALDATA.exists(), reason=f"Astyx data not at {REALDATA}")
def test_astyx_split_is_by_whole_runs_and_disjoint():
    from fusion.datasets.astyx import sequence_ids
    from fusion.learn.data import astyx_split

    parts = astyx_split(REALDATA)
    runs = sequence_ids(REALDATA)
    sets = {k: set(v) for k, v in parts.items()}
    assert sum(len(v) for v in sets.values()) == len(runs)
    assert not (sets["train"] & sets["val"]) and not (sets["val"] & sets["test"])
    run_sets = {k: {runs[i] for i in v} for k, v in sets.items()}
    assert not (run_sets["train"] & run_sets["val"]) and not (run_sets["val"] & run_sets["test"])
    assert 0.18 <= len(sets["test"]) / len(runs) <= 0.3
    assert max(sets["train"]) < min(sets["val"]) <= max(sets["val"]) < min(sets["test"])
