"""The fusion model: the pretrained backbone, the network's shapes and modes, the BEV inputs and
targets, decoding, weights files and the detector's stages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusion.errors import ConfigError, ModelError
from fusion.model import Detector, FusionNet, ModelConfig, load_weights, save_weights
from fusion.model.decode import bev_nms, decode, find_peaks
from fusion.model.efficientnet import (
    BLOCK_CHANNELS,
    BLOCK_STRIDES,
    EfficientNetLite0,
    load_pretrained,
    pretrained_state_dict,
)
from fusion.model.inputs import encode_inputs, head_cell_centres, lift_grid
from fusion.model.losses import focal_loss, total_loss
from fusion.model.network import HEAD_CHANNELS, MODES, RADAR_CHANNELS, present_flags
from fusion.model.synthetic import frame, tiny_config
from fusion.model.targets import draw_gaussian, encode_targets
from fusion.wire.messages import CLASS_NAMES, DETECTION_DTYPE, GT_BOX_DTYPE


@pytest.fixture(scope="module")
def tiny() -> FusionNet:
    torch.manual_seed(0)
    return FusionNet(tiny_config()).eval()


def inputs_of(cfg: ModelConfig, seed: int = 0) -> tuple[dict[str, torch.Tensor], object]:
    f = frame(np.random.default_rng(seed))
    arrays = encode_inputs(f.inputs, cfg)
    return {k: torch.from_numpy(v[None]) for k, v in arrays.items()}, f


# ---------------------------------------------------------------------------- backbone


def test_pretrained_weights_load_strictly_from_the_installed_package() -> None:
    state = pretrained_state_dict()
    assert any(k.startswith("_blocks.15.") for k in state) and "_fc.weight" in state
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    assert sum(v.numel() for v in state.values() if v.is_floating_point()) > 4.6e6


def test_backbone_taps_have_the_documented_strides_and_channels() -> None:
    model = load_pretrained()
    x = torch.zeros(1, 3, 96, 128)
    with torch.no_grad():
        taps = model.features(x, (4, 10, 15))
    for tap, out in zip((4, 10, 15), taps, strict=True):
        assert out.shape == (
            1,
            BLOCK_CHANNELS[tap],
            96 // BLOCK_STRIDES[tap],
            128 // BLOCK_STRIDES[tap],
        )


#: ImageNet classes of cars and their parts (sports car, minivan, beach wagon, cab, ...).
IMAGENET_CARS = {407, 436, 468, 511, 573, 575, 581, 609, 627, 656, 661, 675, 717, 734, 751, 817}


@pytest.mark.realdata
def test_pretrained_classifier_sees_the_cars_of_real_frames(astyx_root) -> None:
    """Crops of labelled Astyx cars, through the same TF-"SAME" padding and normalisation the
    fusion network uses: the ImageNet head ranks a car class in its top 5 for nearly all."""
    import cv2

    from fusion.datasets import astyx
    from fusion.perception.geometry import CameraModel, box_corners
    from fusion.perception.image import camera_image
    from fusion.perception.preprocess import prepare_image

    crops = []
    for index in range(0, 446, 40):
        f = astyx.read_frame(astyx_root, index)
        image = camera_image(f.camera)
        camera = CameraModel.from_calibration(f.calibrations[0])
        for b in f.ground_truth.boxes[f.ground_truth.boxes["class_id"] == 0]:
            corners = box_corners(
                (b["x"], b["y"], b["z"]), (b["l"], b["w"], b["h"]), float(b["yaw"])
            )
            uv, depth = camera.project(corners)
            (u0, v0), (u1, v1) = np.nanmin(uv, axis=0), np.nanmax(uv, axis=0)
            if np.hypot(b["x"], b["y"]) > 25 or (depth < 1).any() or u0 < 0 or u1 > 2048:
                continue
            crop = image[max(0, int(v0)) : int(v1), int(u0) : int(u1)]
            crops.append(prepare_image(cv2.resize(crop, (224, 224)), 224, 224))
    assert len(crops) >= 8
    with torch.no_grad():
        logits = load_pretrained()(torch.from_numpy(np.stack(crops)))
    top5 = logits.topk(5, dim=1).indices.numpy()
    hits = np.mean([bool(IMAGENET_CARS & set(row)) for row in top5])
    assert hits >= 0.8, hits


# ---------------------------------------------------------------------------- network


def test_forward_shapes_in_every_mode(tiny: FusionNet) -> None:
    cfg = tiny.cfg
    batch, _ = inputs_of(cfg)
    rows, cols = cfg.grid_shape("head")
    assert batch["raster"].shape == (1, RADAR_CHANNELS, *cfg.grid_shape("raster"))
    assert batch["grid"].shape == (1, len(cfg.lift_heights_m), rows, cols, 2)
    for mode in MODES:
        with torch.no_grad():
            out = tiny(batch["image"], batch["raster"], batch["grid"], present_flags(mode, 1))
        assert out["heatmap"].shape == (1, cfg.num_classes, rows, cols)
        for name, channels in HEAD_CHANNELS.items():
            assert out[name].shape == (1, channels, rows, cols)
        assert out["vae_score"].shape == (1,) and torch.isfinite(out["vae_score"]).all()


def test_each_mode_ignores_the_missing_sensor(tiny: FusionNet) -> None:
    cfg = tiny.cfg
    batch, _ = inputs_of(cfg)
    noise = {k: v.clone() for k, v in batch.items()}
    noise["image"] = torch.randn_like(noise["image"])
    noise["raster"] = torch.rand_like(noise["raster"])
    with torch.no_grad():
        for mode, changed in (("camera_only", "raster"), ("radar_only", "image")):
            flags = present_flags(mode, 1)
            a = tiny(batch["image"], batch["raster"], batch["grid"], flags)
            b_in = {**batch, changed: noise[changed]}
            b = tiny(b_in["image"], b_in["raster"], b_in["grid"], flags)
            torch.testing.assert_close(a["heatmap"], b["heatmap"])


def test_trainable_state_leaves_out_the_frozen_backbone() -> None:
    model = FusionNet(tiny_config())
    assert not any(k.startswith("image.early.") for k in model.trainable_state_dict())
    assert not any(p.requires_grad for p in model.image.early.parameters())
    model.train()
    assert not model.image.early.training  # ImageNet batch statistics are kept


def test_config_checks_and_round_trips() -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        ModelConfig(input_w=100)
    with pytest.raises(ConfigError, match="class_names"):
        ModelConfig(class_names=("boat",))
    cfg = tiny_config(ground_plane=(-0.8, 0.045))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "nonsense": 1})


# ---------------------------------------------------------------------------- inputs, targets


def test_lift_grid_samples_where_the_camera_sees_each_cell() -> None:
    cfg = tiny_config(ground_plane=(0.2, 0.01))
    f = frame(np.random.default_rng(0))
    camera = f.inputs.camera
    grid = lift_grid(camera, cfg)
    x, y = head_cell_centres(cfg)
    r, c = 3, 7
    height = cfg.lift_heights_m[1]
    uv, _ = camera.project(np.array([[x[r, c], y[r, c], 0.2 + 0.01 * x[r, c] + height]]))
    expected = (uv[0] + 0.5) / (camera.width_px, camera.height_px) * 2 - 1
    np.testing.assert_allclose(grid[1, r, c], expected, atol=1e-5)
    behind = lift_grid(camera.scaled(64, 36), tiny_config(x_range_m=(-25.6, 0.0)))
    assert (behind == -2).all()  # nothing behind the camera is sampled


def test_targets_decode_back_to_the_boxes() -> None:
    cfg = tiny_config(class_names=("car", "pedestrian"))
    boxes = np.zeros(3, GT_BOX_DTYPE)
    boxes["class_id"] = [0, 2, 1]  # the truck is not a class of this model
    boxes["x"], boxes["y"], boxes["z"] = [12.3, 7.7, 9.0], [-3.1, 4.2, 0.0], [-0.5, -0.2, 0.0]
    boxes["l"], boxes["w"], boxes["h"] = [4.2, 0.8, 8.0], [1.8, 0.7, 2.5], [1.5, 1.8, 3.0]
    boxes["yaw"], boxes["vx"], boxes["vy"] = [0.4, -2.0, 0.0], [3.0, np.nan, 0], [1.0, np.nan, 0]
    t = encode_targets(boxes, cfg)
    assert t["mask"].sum() == 2 and t["velocity_mask"].sum() == 1
    rows, cols = cfg.grid_shape("head")
    out = {"heatmap": np.full((1, 2, rows, cols), -9.0, np.float32)}
    for name, n in HEAD_CHANNELS.items():
        out[name] = np.zeros((1, n, rows, cols), np.float32)
    for k in np.flatnonzero(t["mask"]):
        r, c = divmod(int(t["index"][k]), cols)
        cls = int(np.argmax(t["heatmap"][:, r, c]))  # the class whose Gaussian peaks there
        out["heatmap"][0, cls, r, c] = 9.0
        for name in HEAD_CHANNELS:
            out[name][0, :, r, c] = t[name][k]
    det = decode(out, cfg)[0]
    assert len(det) == 2
    for d in det:
        b = boxes[boxes["class_id"] == d["class_id"]][0]
        assert math.hypot(d["x"] - b["x"], d["y"] - b["y"]) < 1e-4
        assert d["l"] == pytest.approx(b["l"], rel=1e-5) and d["z"] == pytest.approx(b["z"])
        assert d["yaw"] == pytest.approx(b["yaw"], abs=1e-5)
    assert det.dtype == DETECTION_DTYPE


def test_gaussian_peaks_at_one_and_is_clipped_at_the_edges() -> None:
    heatmap = np.zeros((10, 10), np.float32)
    draw_gaussian(heatmap, 0, 9, 2.0)
    assert heatmap[0, 9] == 1.0 and heatmap.max() == 1.0
    assert 0 < heatmap[1, 8] < 1 and heatmap[5, 0] == 0


def test_peaks_and_bev_nms() -> None:
    logits = torch.full((1, 1, 8, 8), -5.0)
    logits[0, 0, 2, 2], logits[0, 0, 2, 3], logits[0, 0, 6, 6] = 3.0, 2.0, 1.0
    _, _, rows, cols = find_peaks(logits, 5)
    assert (rows[0, :2].tolist(), cols[0, :2].tolist()) == ([2, 6], [2, 6])  # 2,3 is suppressed
    det = np.zeros(3, DETECTION_DTYPE)
    det["x"], det["score"], det["class_id"] = [10.0, 10.5, 10.2], [0.9, 0.8, 0.7], [0, 0, 1]
    kept = bev_nms(det, 1.5)
    assert kept["score"].tolist() == pytest.approx([0.9, 0.7])  # other class kept


# ---------------------------------------------------------------------------- losses


def test_focal_loss_rewards_the_right_heatmap() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 4] = 1.0
    right = torch.full_like(target, -6.0)
    right[0, 0, 3, 4] = 6.0
    assert float(focal_loss(right, target)) < 0.05 < float(focal_loss(-right, target))


def test_total_loss_has_every_part(tiny: FusionNet) -> None:
    cfg = tiny.cfg
    batch, f = inputs_of(cfg)
    tiny.train()
    present = torch.ones(2, 2)
    two = {k: torch.cat([v, v]) for k, v in batch.items()}
    out = tiny(two["image"], two["raster"], two["grid"], present)
    targets = {
        k: torch.from_numpy(np.stack([v, v])) for k, v in encode_targets(f.boxes, cfg).items()
    }
    loss, parts = total_loss(out, targets, present, cfg)
    tiny.eval()
    assert set(parts) == {"heatmap", *HEAD_CHANNELS, "vae"}
    assert math.isfinite(loss.item())
    loss.backward()


# ---------------------------------------------------------------------------- weights


def test_weights_round_trip_and_say_what_is_wrong(tmp_path, tiny: FusionNet) -> None:
    path = save_weights(tmp_path / "w.safetensors", tiny, data="unit test")
    model, meta = load_weights(path)
    assert meta["data"] == "unit test" and model.cfg == tiny.cfg
    torch.testing.assert_close(model.trainable_state_dict(), tiny.trainable_state_dict())
    with pytest.raises(ModelError, match="no weights file"):
        load_weights(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a safetensors"):
        load_weights(tmp_path / "junk.safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors.pop(next(iter(tensors)))
    meta_in = dict(meta)
    save_file(tensors, str(tmp_path / "short.safetensors"), metadata=meta_in)
    with pytest.raises(ModelError, match="missing"):
        load_weights(tmp_path / "short.safetensors")
    save_file(
        load_file(str(path)),
        str(tmp_path / "other.safetensors"),
        metadata={**meta_in, "backbone_sha256": "0" * 16},
    )
    with pytest.raises(ModelError, match="backbone"):
        load_weights(tmp_path / "other.safetensors")


def test_committed_sim_weights_load_and_detect() -> None:
    from fusion.model.weights import DEFAULT_WEIGHTS

    det = Detector.load(DEFAULT_WEIGHTS, device="cpu", backend="torch")
    assert det.cfg.health and math.isfinite(det.cfg.health_threshold)
    f = frame(np.random.default_rng(3)).inputs
    objects, health = det.detect(f.image_bgr, f.points, f.camera)
    assert objects.dtype == DETECTION_DTYPE and {"score", "threshold", "ok"} <= set(health)
    assert all(n in CLASS_NAMES for n in det.cfg.class_names)


# ---------------------------------------------------------------------------- detector


def test_detector_stages_equal_detect_and_report_health(tiny: FusionNet) -> None:
    det = Detector(tiny, device="cpu", backend="torch")
    f = frame(np.random.default_rng(5)).inputs
    prepared = det.preprocess(f.image_bgr, f.points, f.camera)
    raw = det.infer(prepared, "fused")
    objects, health = det.decode(prepared, raw)
    det.cues.reset()
    again, health_again = det.detect(f.image_bgr, f.points, f.camera)
    np.testing.assert_array_equal(objects, again)
    assert "vae" in health and health["score"] == health_again["score"]
    _, camera_only = det.detect(f.image_bgr, f.points, f.camera, "camera_only")
    assert "vae" not in camera_only and "radar_points" not in camera_only
    with pytest.raises(ModelError, match="mode"):
        det.infer(prepared, "both")


def test_batch_norm_folding_keeps_the_outputs(tiny: FusionNet) -> None:
    from fusion.model.backends import TorchBackend

    batch, _ = inputs_of(tiny.cfg, 7)
    arrays = {k: v.numpy() for k, v in batch.items()} | {"present": np.ones((1, 2), np.float32)}
    with torch.no_grad():
        plain = tiny(*(torch.from_numpy(arrays[k]) for k in ("image", "raster", "grid", "present")))
    folded = TorchBackend(tiny).run(arrays)
    np.testing.assert_allclose(folded["heatmap"], plain["heatmap"].numpy(), atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny.modules())  # not mutated


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_cpu_fp32(tiny: FusionNet) -> None:
    from fusion.model.backends import TorchBackend, parity

    batch, _ = inputs_of(tiny.cfg, 9)
    arrays = {k: v.numpy() for k, v in batch.items()} | {"present": np.ones((1, 2), np.float32)}
    cpu = TorchBackend(tiny).run(arrays)
    gpu = TorchBackend(tiny, "cuda", "fp16").run(arrays)
    assert parity(cpu, gpu)["heatmap"] < 0.02
