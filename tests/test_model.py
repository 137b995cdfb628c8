"""The fusion network: shapes per stage, losses, target encoding and decoding round trips,
modality handling, the Detector API and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusion.errors import ConfigError, ModelError
from fusion.model import (
    Detector,
    FusionNet,
    ModelConfig,
    load_checkpoint,
    save_checkpoint,
    synthetic,
)
from fusion.model.data import (
    collate,
    decode_yaw,
    draw_gaussian,
    encode_sample,
    encode_targets,
    encode_yaw,
    wrap_angle,
)
from fusion.model.decode import decode, find_peaks
from fusion.model.losses import focal_loss, total_loss
from fusion.model.network import POINT_FEATURES, present_flags
from fusion.model.synthetic import tiny_config
from fusion.wire.messages import CLASS_NAMES, DETECTION_DTYPE, GT_BOX_DTYPE


def batch_of(cfg: ModelConfig, n: int = 2, seed: int = 0) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(seed)
    items = [encode_sample(synthetic.sample(rng, 3, 320, 160, key=f"s/{i}"), cfg) for i in range(n)]
    return items, collate(items)


def run_net(model: FusionNet, b: dict, mode: str = "fused") -> dict:
    return model(
        b["image"],
        b["point_features"],
        b["point_cells"],
        b["point_valid"],
        b["raster"],
        present_flags(mode, b["image"].shape[0]),
    )


def test_shapes_per_stage():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = FusionNet(cfg).eval()
    _, b = batch_of(cfg)
    assert b["image"].shape == (2, 3, 64, 128)
    assert b["point_features"].shape[2] == POINT_FEATURES
    assert b["raster"].shape == (2, cfg.radar_raster_channels, 8, 16)
    image_features = model.image_branch(b["image"])
    assert image_features.shape == (2, cfg.pyramid_channels, 8, 16)
    radar = model.radar_encoder(
        b["point_features"], b["point_cells"], b["point_valid"], b["raster"]
    )
    assert radar.shape == (2, cfg.radar_channels, 8, 16)
    out = run_net(model, b)
    assert out["heatmap"].shape == (2, cfg.num_classes, 8, 16)
    assert out["offset"].shape == (2, 2, 8, 16)
    assert out["log_dims"].shape == (2, 3, 8, 16)
    assert out["yaw_bin"].shape == out["yaw_residual"].shape == (2, cfg.yaw_bins, 8, 16)
    assert out["velocity"].shape == (2, 2, 8, 16)
    assert out["health_score"].shape == (2,)
    assert torch.isfinite(out["health_score"]).all()


def test_config_rejects_bad_sizes_and_round_trips():
    with pytest.raises(ConfigError, match="multiple of 32"):
        ModelConfig(input_w=100)
    cfg = tiny_config()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({"no_such_field": 1})


def test_focal_loss_is_small_for_right_and_large_for_wrong_heatmaps():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 4] = 1.0
    right = torch.where(target == 1, torch.tensor(8.0), torch.tensor(-8.0))
    assert focal_loss(right, target) < 1e-3
    assert focal_loss(-right, target) > 5.0
    assert focal_loss(torch.zeros(1, 1, 8, 8), target) > focal_loss(right, target)


@pytest.mark.parametrize("alpha", [-math.pi, -2.5, -0.3, 0.0, 0.1, 1.9, 3.1])
@pytest.mark.parametrize("bins", [4, 8, 12])
def test_yaw_bin_round_trip(alpha, bins):
    b, residual = encode_yaw(alpha, bins)
    assert 0 <= b < bins and -0.5 <= residual < 0.5
    back = decode_yaw(np.array([b]), np.array([residual]), bins)[0]
    assert abs(wrap_angle(back - alpha)) < 1e-9


def test_gaussian_peak_is_one_at_the_centre_and_clipped_at_edges():
    heatmap = np.zeros((6, 10), np.float32)
    draw_gaussian(heatmap, 0, 5, 2.0)
    assert heatmap[5, 0] == 1.0 and heatmap.max() == 1.0
    assert 0 < heatmap[5, 2] < 1 and heatmap[0, 9] == 0


def perfect_outputs(targets: dict, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Head maps that hold the encoded targets exactly (what a perfect network outputs)."""
    h, w = cfg.grid_h, cfg.grid_w
    out = {
        "heatmap": torch.full((1, cfg.num_classes, h, w), -10.0),
        "offset": torch.zeros(1, 2, h, w),
        "log_depth": torch.zeros(1, 1, h, w),
        "log_dims": torch.zeros(1, 3, h, w),
        "yaw_bin": torch.zeros(1, cfg.yaw_bins, h, w),
        "yaw_residual": torch.zeros(1, cfg.yaw_bins, h, w),
        "velocity": torch.zeros(1, 2, h, w),
    }
    peaks = torch.from_numpy(targets["heatmap"]) == 1
    out["heatmap"][0][peaks] = 10.0
    for k in range(int(targets["mask"].sum())):
        y, x = divmod(int(targets["index"][k]), w)
        out["offset"][0, :, y, x] = torch.from_numpy(targets["offset"][k])
        out["log_depth"][0, 0, y, x] = float(targets["log_depth"][k])
        out["log_dims"][0, :, y, x] = torch.from_numpy(targets["log_dims"][k])
        out["yaw_bin"][0, int(targets["yaw_bin"][k]), y, x] = 5.0
        out["yaw_residual"][0, int(targets["yaw_bin"][k]), y, x] = float(targets["yaw_residual"][k])
        out["velocity"][0, :, y, x] = torch.from_numpy(targets["velocity"][k])
    return out


def test_encoded_targets_decode_back_to_the_boxes_in_the_radar_frame():
    cfg = ModelConfig()
    cam = synthetic.camera(cfg.input_w, cfg.input_h)
    boxes = np.zeros(3, GT_BOX_DTYPE)
    boxes["class_id"] = [CLASS_NAMES.index(c) for c in ("car", "pedestrian", "truck")]
    boxes["x"], boxes["y"], boxes["z"] = [12.0, 20.5, 33.0], [2.0, -3.3, 6.0], [-0.7, -0.4, 0.2]
    boxes["l"], boxes["w"], boxes["h"] = [4.3, 0.6, 9.0], [1.8, 0.7, 2.5], [1.5, 1.8, 3.4]
    boxes["yaw"] = [0.3, -2.0, 2.9]
    boxes["vx"], boxes["vy"] = [4.0, 0.5, -7.0], [1.0, 1.2, 0.3]
    targets = encode_targets(boxes, cam, cfg)
    assert targets["mask"].sum() == 3
    det = decode(perfect_outputs(targets, cfg), [cam], cfg)[0]
    assert det.dtype == DETECTION_DTYPE and len(det) == 3
    det = det[np.argsort(det["x"])]
    for field in ("class_id", "x", "y", "z", "l", "w", "h", "vx", "vy"):
        np.testing.assert_allclose(det[field], boxes[field], atol=1e-3, err_msg=field)
    np.testing.assert_allclose(wrap_angle(det["yaw"] - boxes["yaw"]), 0, atol=1e-4)


def test_targets_skip_boxes_behind_or_outside_the_image_and_unknown_classes():
    cfg = ModelConfig(class_names=("car",))
    cam = synthetic.camera(cfg.input_w, cfg.input_h)
    boxes = np.zeros(3, GT_BOX_DTYPE)
    boxes["class_id"] = [0, 0, CLASS_NAMES.index("pedestrian")]
    boxes["x"], boxes["y"] = [-10.0, 10.0, 10.0], [0.0, 40.0, 0.0]
    boxes["l"] = boxes["w"] = boxes["h"] = 1.0
    assert encode_targets(boxes, cam, cfg)["mask"].sum() == 0


def test_peaks_use_3x3_max_pool_and_top_k():
    logits = torch.full((1, 2, 6, 6), -10.0)
    logits[0, 0, 2, 2], logits[0, 0, 2, 3] = 3.0, 2.0  # neighbour suppressed
    logits[0, 1, 5, 0] = 1.0
    scores, classes, ys, xs = find_peaks(logits, top_k=3)
    assert classes[0, :2].tolist() == [0, 1]
    assert (ys[0, :2].tolist(), xs[0, :2].tolist()) == ([2, 5], [2, 0])
    assert scores[0, 2] < 1e-3


def test_modes_ignore_the_missing_sensor():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = FusionNet(cfg).eval()
    _, b = batch_of(cfg, 1)
    with torch.no_grad():
        fused = run_net(model, b)["heatmap"]
        camera_only = run_net(model, b, "camera_only")["heatmap"]
        radar_only = run_net(model, b, "radar_only")["heatmap"]
        no_radar = dict(
            b, point_valid=torch.zeros_like(b["point_valid"]), raster=torch.rand_like(b["raster"])
        )
        torch.testing.assert_close(run_net(model, no_radar, "camera_only")["heatmap"], camera_only)
        black = dict(b, image=torch.randn_like(b["image"]))
        torch.testing.assert_close(run_net(model, black, "radar_only")["heatmap"], radar_only)
    assert not torch.allclose(fused, camera_only) and not torch.allclose(fused, radar_only)
    with pytest.raises(ValueError, match="mode"):
        present_flags("lidar_only", 1)


def test_total_loss_has_every_part_and_is_finite():
    cfg = tiny_config()
    model = FusionNet(cfg)
    _, b = batch_of(cfg)
    loss, parts = total_loss(run_net(model, b), b["targets"], cfg)
    assert torch.isfinite(loss)
    assert set(parts) == {
        "heatmap",
        "offset",
        "depth",
        "dims",
        "yaw_bin",
        "yaw_residual",
        "velocity",
        "vae",
    }
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_detector_detect_equals_its_split_form_and_reports_health(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", FusionNet(cfg))
    detector = Detector.load(tmp_path / "m.pt", device="cpu", precision="fp32", threads=1)
    frame = synthetic.sample(np.random.default_rng(1), 3, 320, 160)
    det, health = detector.detect(frame.image_bgr, frame.points, frame.camera)
    prepared = detector.preprocess(frame.image_bgr, frame.points, frame.camera)
    det2, health2 = detector.decode(prepared, detector.infer(prepared, "fused"))
    assert det.dtype == DETECTION_DTYPE and len(det) <= cfg.top_k
    np.testing.assert_array_equal(det, det2)
    assert set(health) == {"score", "recon", "kl"} and health == health2
    assert all(math.isfinite(v) for v in health.values())
    for mode in ("camera_only", "radar_only"):
        assert (
            detector.detect(frame.image_bgr, frame.points[:0], frame.camera, mode)[0].dtype
            == DETECTION_DTYPE
        )
    with pytest.raises(ModelError, match="mode"):
        detector.infer(prepared, "thermal")


def test_bf16_cpu_path_matches_fp32_within_tolerance(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(0)
    model = FusionNet(cfg)
    save_checkpoint(tmp_path / "m.pt", model)
    fp32 = Detector.load(tmp_path / "m.pt", device="cpu", precision="fp32", threads=1)
    bf16 = Detector.load(tmp_path / "m.pt", device="cpu", precision="bf16", threads=1)
    frame = synthetic.sample(np.random.default_rng(2), 3, 320, 160)
    prepared = fp32.preprocess(frame.image_bgr, frame.points, frame.camera)
    a = torch.sigmoid(fp32.infer(prepared)["heatmap"].float())
    b = torch.sigmoid(bf16.infer(prepared)["heatmap"].float())
    assert (a - b).abs().max() < 0.05


def test_checkpoint_round_trip_and_errors(tmp_path):
    cfg = tiny_config()
    model = FusionNet(cfg)
    save_checkpoint(tmp_path / "m.pt", model, epoch=3, best_metric=0.5)
    loaded, state = load_checkpoint(tmp_path / "m.pt")
    assert loaded.cfg == cfg and state["epoch"] == 3 and state["best_metric"] == 0.5
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    with pytest.raises(ModelError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_committed_default_weights_load_and_run():
    from fusion.model import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.exists():
        pytest.skip(f"{DEFAULT_WEIGHTS} not trained yet (fusion train --sim-seeds ... --export)")
    detector = Detector.load(DEFAULT_WEIGHTS, device="cpu", threads=2)
    frame = synthetic.sample(np.random.default_rng(0), 3, 1280, 720)
    det, health = detector.detect(frame.image_bgr, frame.points, frame.camera)
    assert det.dtype == DETECTION_DTYPE and math.isfinite(health["score"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_cpu_fp32(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", FusionNet(cfg))
    cpu = Detector.load(tmp_path / "m.pt", device="cpu", precision="fp32")
    gpu = Detector.load(tmp_path / "m.pt", device="cuda", precision="fp16")
    assert gpu.channels_last
    frame = synthetic.sample(np.random.default_rng(3), 3, 320, 160)
    a = cpu.infer(cpu.preprocess(frame.image_bgr, frame.points, frame.camera))
    b = gpu.infer(gpu.preprocess(frame.image_bgr, frame.points, frame.camera))
    diff = (torch.sigmoid(a["heatmap"].float()) - torch.sigmoid(b["heatmap"].float().cpu())).abs()
    assert diff.max() < 0.02


def test_radar_refinement_snaps_the_range_to_the_covered_points():
    from fusion.model.decode import refine_with_radar
    from fusion.wire.messages import RADAR_POINT_DTYPE

    cfg = ModelConfig(radar_refine_offset_m=(0.0, 1.0), radar_refine_gate_m=2.5)
    det = np.zeros(2, DETECTION_DTYPE)
    det["x"], det["y"] = [21.0, 10.0], [0.0, 5.0]
    det["l"], det["w"], det["h"], det["yaw"] = 4.0, 2.0, 1.5, 0.0
    points = np.zeros(6, RADAR_POINT_DTYPE)
    points["x"] = [20.0, 20.0, 20.0, 20.1, 30.0, 21.0]  # rear face at 20 m; far; off to the side
    points["y"] = [-0.8, 0.0, 0.5, 0.2, 0.0, 4.0]
    refine_with_radar(det, points, cfg)
    # median covered range 20 m + 1.0 * half length along the ray (2 m) -> 22 m
    assert det["x"][0] == pytest.approx(22.0, abs=0.02) and det["y"][0] == 0.0
    assert (det["x"][1], det["y"][1]) == (10.0, 5.0)  # no points: unchanged


def test_folding_batch_norms_keeps_the_outputs() -> None:
    import copy

    torch.manual_seed(1)
    model = FusionNet(tiny_config()).eval()
    with torch.no_grad():  # non-trivial running statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d) and m.affine:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    reference = copy.deepcopy(model)  # stays unfolded
    detector = Detector(model, device="cpu", precision="fp32")  # folds `model` in place
    assert detector.folded_batch_norms > 10
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.affine for m in model.modules())
    frame = synthetic.sample(np.random.default_rng(0), 3, 128, 64)
    prepared = detector.preprocess(frame.image_bgr, frame.points, frame.camera)
    folded_out = detector.infer(prepared)
    detector.forward = reference  # the same inputs through the unfolded network
    unfolded_out = detector.infer(prepared)
    for key in ("heatmap", "offset", "log_depth", "log_dims"):
        torch.testing.assert_close(folded_out[key], unfolded_out[key], atol=1e-4, rtol=1e-4)
