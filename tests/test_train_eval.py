"""Learning: one data path for training and serving, augmentations that keep the sensors
consistent, the training loop, its checkpoints and resume, evaluation and fault injection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.learn import augment
from fusion.learn.config import TrainConfig
from fusion.learn.data import LabelledFrame, labelled_frames
from fusion.learn.evaluate import FAULTS, ablation, auroc, fault_auroc, inject_fault
from fusion.learn.features import compute_features, load_feature_set, save_feature_set
from fusion.learn.train import EarlyStopping, fit_ground_plane, learning_rate, train
from fusion.logs.memory import MessageLog
from fusion.logs.player import Player
from fusion.model import FusionNet, load_weights
from fusion.model.detector import Detector
from fusion.model.inputs import encode_inputs, radar_raster
from fusion.model.synthetic import frame, tiny_config
from fusion.perception.pipeline import FusionPipeline, PipelineConfig
from fusion.runtime.testing import FakeSubscriber
from fusion.sim import simulate

REPO = Path(__file__).resolve().parents[1]


def synthetic_frames(n: int, seed: int = 0) -> list[LabelledFrame]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        f = frame(rng, n_boxes=3, max_range_m=22.0)
        out.append(LabelledFrame(f.inputs, f.boxes, f"synthetic-{k // 4}", f"synthetic/{k}"))
    return out


@pytest.fixture(scope="module")
def features():
    cfg = tiny_config()
    return compute_features(synthetic_frames(12), cfg, "synthetic 12"), cfg


# ------------------------------------------------------------------------ one data path


class _Recording(Detector):
    """The real detector, keeping the inputs each frame was preprocessed into."""

    def preprocess(self, image_bgr, radar_points, camera_model):
        prepared = super().preprocess(image_bgr, radar_points, camera_model)
        self.seen.append(prepared.inputs)
        return prepared


def test_training_samples_are_the_inputs_the_fusion_node_runs_on() -> None:
    """One simulated drive played as ``fusion play --lockstep`` sends it into the fusion node's
    pipeline with a real detector (as ``nodes.fusion_node --lockstep`` runs it), and through the
    training data path: every frame's network inputs are identical, bit for bit (same pairing,
    motion compensation, radar calibration, image decode, rasters, lift grid)."""
    model = FusionNet(tiny_config()).eval()
    detector = _Recording(model, device="cpu", backend="torch")
    detector.seen = []
    log = MessageLog(simulate("city", seed=3, duration_s=1.5), "city")
    player = Player(log, lockstep=True, answers=FakeSubscriber("detections"), clock_ns=lambda: 0)
    pipeline = FusionPipeline(detector, PipelineConfig(lockstep=True), clock_ns=lambda: 0)
    outputs = [out for topic, msg in player.lockstep_stream() for out in pipeline.feed(topic, msg)]
    served = {
        out.source_seqs["camera"]: inputs
        for out, inputs in zip([o for o in outputs if o.valid], detector.seen, strict=True)
    }
    cfg = model.cfg
    frames = list(labelled_frames(log, (cfg.input_w, cfg.input_h), "city"))
    assert len(frames) > 20 and len(frames) == len(served)
    for f in frames:
        trained = encode_inputs(f.inputs, cfg)
        node = served[int(f.key.rsplit("/", 1)[1])]
        for name in ("image", "raster", "grid"):
            np.testing.assert_array_equal(trained[name], node[name], err_msg=name)


def test_training_frames_pair_each_camera_frame_with_its_own_scan_whatever_the_order() -> None:
    """Camera before radar at the same log time (as the Astyx importer writes them) pairs like
    radar before camera."""
    messages = list(simulate("highway", seed=5, duration_s=1.0))
    cfg = tiny_config()
    size = (cfg.input_w, cfg.input_h)
    camera_first = sorted(messages, key=lambda tm: (tm[1].capture_ns, tm[0] != "camera"))
    radar_first = sorted(messages, key=lambda tm: (tm[1].capture_ns, tm[0] != "radar"))
    a = list(labelled_frames(MessageLog(camera_first), size, "a"))
    b = list(labelled_frames(MessageLog(radar_first), size, "a"))
    assert [f.key for f in a] == [f.key for f in b] and len(a) > 5
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa.inputs.points, fb.inputs.points)


# ------------------------------------------------------------------------ augmentation


def test_mirror_flips_the_image_coordinates_of_everything() -> None:
    f = frame(np.random.default_rng(2))
    camera = f.inputs.camera
    points, boxes, mirrored = augment.mirror(f.inputs.points, f.boxes, camera)
    xyz = np.stack([f.inputs.points[k] for k in "xyz"], axis=1).astype(np.float64)
    xyz_m = np.stack([points[k] for k in "xyz"], axis=1).astype(np.float64)
    uv, depth = camera.project(xyz)
    uv_m, depth_m = mirrored.project(xyz_m)
    np.testing.assert_allclose(uv_m[:, 0], camera.width_px - 1 - uv[:, 0], atol=1e-6)
    np.testing.assert_allclose(uv_m[:, 1], uv[:, 1], atol=1e-6)
    np.testing.assert_allclose(depth_m, depth, atol=1e-9)
    np.testing.assert_allclose(boxes["yaw"], -f.boxes["yaw"])
    cfg = tiny_config()  # a y range symmetric about 0: the raster's columns reverse
    np.testing.assert_array_equal(
        radar_raster(points, cfg), radar_raster(f.inputs.points, cfg)[:, :, ::-1]
    )


def test_similarity_keeps_every_point_where_the_camera_sees_it() -> None:
    f = frame(np.random.default_rng(3))
    camera = f.inputs.camera
    points, boxes, moved = augment.similarity(f.inputs.points, f.boxes, camera, 0.08, 1.04, 1.5)
    for before, after in ((f.inputs.points, points), (f.boxes, boxes)):
        xyz = np.stack([before[k] for k in "xyz"], axis=1).astype(np.float64)
        xyz_m = np.stack([after[k] for k in "xyz"], axis=1).astype(np.float64)
        np.testing.assert_allclose(moved.project(xyz_m)[0], camera.project(xyz)[0], atol=1e-3)
    np.testing.assert_allclose(boxes["l"], f.boxes["l"] * 1.04, rtol=1e-6)
    assert not np.allclose(points["x"], f.inputs.points["x"])


def test_radar_noise_drops_and_jitters() -> None:
    points = frame(np.random.default_rng(4)).inputs.points
    out = augment.radar_noise(points, np.random.default_rng(0), 0.5, 0.05)
    assert 0.4 * len(points) <= len(out) <= len(points)
    assert len(augment.radar_noise(points[:0], np.random.default_rng(0), 0.5, 0.05)) == 0


# ------------------------------------------------------------------------ training


def test_training_fits_writes_and_resumes(tmp_path, features) -> None:
    fs, cfg = features
    tcfg = TrainConfig(
        data="sim", epochs=2, batch_size=4, lr=3e-3, out=str(tmp_path / "run"), progress=False
    )
    result = train(cfg, tcfg, fs.subset(range(8)), fs.subset(range(8, 12)))
    run = tmp_path / "run"
    for name in ("best.safetensors", "last.safetensors", "final.safetensors", "log.csv"):
        assert (run / name).exists(), name
    assert result.epochs_run == 2 and len(result.history) == 2
    losses = [r["loss_heatmap"] for r in result.history]
    assert losses[1] < losses[0]
    model, meta = load_weights(run / "best.safetensors")
    assert TrainConfig.from_json(meta["train_config"]).epochs == 2
    assert {"data", "code_version", "seed"} <= set(meta)
    assert model.cfg.health and math.isfinite(model.cfg.health_threshold)  # calibrated
    assert model.cfg.ground_plane == pytest.approx(fit_ground_plane(fs.subset(range(8)), cfg))
    more = TrainConfig(**{**json.loads(tcfg.to_json()), "epochs": 3})
    resumed = train(cfg, more, fs.subset(range(8)), fs.subset(range(8, 12)), resume=True)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]


def test_learning_rate_warms_up_then_decays() -> None:
    rates = [learning_rate(s, 100, 1.0) for s in range(100)]
    assert rates[0] < rates[9] == pytest.approx(1.0, abs=0.1) and rates[-1] < 0.05


def test_early_stopping_counts_epochs_without_improvement() -> None:
    stop = EarlyStopping(patience=2)
    assert stop.update(0.1) and not stop.update(0.1) and not stop.should_stop
    assert not stop.update(0.05) and stop.should_stop


def test_train_config_checks_and_round_trips() -> None:
    with pytest.raises(Exception, match="data"):
        TrainConfig(data="mnist")
    cfg = TrainConfig(epochs=3, sim_seeds=(1, 2))
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert "epochs" in cfg.describe()


def test_feature_cache_round_trips(tmp_path, features) -> None:
    fs, _ = features
    save_feature_set(fs, tmp_path / "f.safetensors")
    back = load_feature_set(tmp_path / "f.safetensors")
    torch.testing.assert_close(back.maps, fs.maps)
    for a, b in zip(back.frames, fs.frames, strict=True):
        np.testing.assert_array_equal(a.inputs.points, b.inputs.points)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.inputs.camera.K, b.inputs.camera.K)
        assert a.key == b.key


# ------------------------------------------------------------------------ evaluation


def test_ablation_scores_every_mode_and_the_baseline(features) -> None:
    fs, cfg = features
    results = ablation(FusionNet(cfg).eval(), fs, ("car",))
    assert set(results) == {"fused", "camera_only", "radar_only", "radar_dbscan_baseline"}
    assert all(0.0 <= r.mean_ap <= 1.0 for r in results.values())


def test_faults_change_the_right_sensor() -> None:
    frames = [f.inputs for f in synthetic_frames(2)]
    rng = np.random.default_rng(0)
    for fault in FAULTS:
        out = inject_fault(frames[1], frames[0], fault, rng)
        image_changed = not np.array_equal(out.image_bgr, frames[1].image_bgr)
        assert image_changed == fault.startswith("camera_"), fault
    assert inject_fault(frames[1], frames[0], "camera_frozen", rng).image_bgr is frames[0].image_bgr
    assert len(inject_fault(frames[1], frames[0], "radar_blackout", rng).points) == 0


def test_fault_auroc_is_deterministic_and_covers_every_fault(features) -> None:
    fs, cfg = features
    model = FusionNet(cfg).eval()
    a = fault_auroc(model, fs.frames[:6])
    b = fault_auroc(model, fs.frames[:6])
    assert a == b and set(a) == set(FAULTS)
    assert all(0.0 <= v["auroc"] <= 1.0 for v in a.values())


def test_auroc_hand_cases() -> None:
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([2, 3], [0, 1]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5 and math.isnan(auroc([], [1]))


# ------------------------------------------------------------------------ command line


@pytest.mark.slow
def test_fusion_train_runs_on_auto_device(tmp_path) -> None:
    """`fusion train --device auto` (it crashed in `model.to("auto")` before) on a short
    simulated drive, then `fusion eval` of its weights."""
    from fusion.cli import main

    out = tmp_path / "run"
    args = ["--sim-seeds", "11", "--val-seeds", "100", "--sim-duration", "1.2", "--epochs", "1"]
    common = ["--cache-dir", str(tmp_path / "cache"), "--device", "auto"]
    assert main(["train", *args, *common, "--out", str(out), "--no-progress"]) == 0
    assert (out / "best.safetensors").exists()
    evaluated = ["eval", "--weights", str(out / "best.safetensors"), "--sim-seeds", "100"]
    assert main([*evaluated, "--sim-duration", "1.2", *common, "--part", "val"]) == 0
