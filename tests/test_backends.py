"""Inference backends: every one agrees with fp32 PyTorch on the same weights, and the choice
by measurement picks an agreeing one, says why, and is cached per machine and weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.errors import ModelError
from fusion.model import FusionNet
from fusion.model import backends as bk
from fusion.model.detector import Detector
from fusion.model.inputs import encode_inputs
from fusion.model.synthetic import frame, tiny_config
from fusion.model.weights import model_digest

CPU_BACKENDS = bk.available_backends("cpu")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> FusionNet:
    torch.manual_seed(1)
    return FusionNet(tiny_config()).eval()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def frame_inputs(model: FusionNet, seed: int, mode: str = "fused") -> dict[str, np.ndarray]:
    arrays = encode_inputs(frame(np.random.default_rng(seed)).inputs, model.cfg)
    present = {"fused": [1, 1], "camera_only": [1, 0], "radar_only": [0, 1]}[mode]
    return {k: v[None] for k, v in arrays.items()} | {"present": np.array([present], np.float32)}


def test_onnx_runtime_and_openvino_are_installed_by_the_set_up() -> None:
    assert {"torch", "onnxruntime", "openvino"} <= set(CPU_BACKENDS)


@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["fused", "camera_only", "radar_only"])
def test_every_backend_agrees_with_fp32_torch(model: FusionNet, name: str, mode: str) -> None:
    reference = bk.TorchBackend(model).run(frame_inputs(model, 0, mode))
    backend = bk.make_backend(name, model, frame_inputs(model, 0), model_digest(model))
    for seed in (0, 1):
        inputs = frame_inputs(model, seed, mode)
        ref = reference if seed == 0 else bk.TorchBackend(model).run(inputs)
        out = backend.run(inputs)
        assert set(out) == set(bk.OUTPUT_NAMES)
        differences = bk.parity(ref, out)
        assert bk.agrees(differences), (name, mode, differences)
        np.testing.assert_allclose(out["vae_score"], ref["vae_score"], rtol=0.05, atol=0.05)


@pytest.fixture(scope="module")
def shipped_frames() -> list:
    """Camera frames of a shipped drive as the fusion node assembles them, with ground truth."""
    from fusion.learn.data import recording_frames
    from fusion.model.weights import DEFAULT_WEIGHTS, load_weights

    cfg = load_weights(DEFAULT_WEIGHTS)[0].cfg
    return recording_frames(REPO / "recordings" / "city.mcap", (cfg.input_w, cfg.input_h))[::10]


def test_every_backend_detects_what_fp32_torch_detects_on_a_shipped_drive(shipped_frames):
    """The committed weights on frames of a shipped drive: every box one backend scores above
    0.3 (plus a margin) has a twin within a few centimetres among the other's boxes above 0.3
    (minus the margin), both ways, and car mean AP is within 0.01 of fp32 PyTorch's. The margin
    is the score difference the backend may show: rounding for fp32 backends, the parity
    tolerance for bf16."""
    from fusion.learn.evaluate import score
    from fusion.model.weights import DEFAULT_WEIGHTS

    results = {}
    for name in CPU_BACKENDS:
        det = Detector.load(DEFAULT_WEIGHTS, device="cpu", backend=name)
        results[name] = [
            det.detect(f.inputs.image_bgr, f.inputs.points, f.inputs.camera)[0]
            for f in shipped_frames
        ]
    reference = results["torch"]
    assert sum(len(d[d["score"] > 0.3]) for d in reference) > 5  # the frames have objects
    ref_ap = score(shipped_frames, reference, ("car",)).mean_ap
    for name, per_frame in results.items():
        bf16 = name == "torch-bf16"
        margin, distance_m = (bk.PARITY_TOLERANCE["heatmap"], 0.15) if bf16 else (0.005, 0.05)
        for ref, got in zip(reference, per_frame, strict=True):
            for a, b in ((got, ref), (ref, got)):
                strong = a[a["score"] > 0.3 + margin]
                near = b[b["score"] > 0.3 - margin]
                for d in strong:
                    gap = np.hypot(near["x"] - d["x"], near["y"] - d["y"]).min(initial=np.inf)
                    assert gap < distance_m, (name, d)
        ap = score(shipped_frames, per_frame, ("car",)).mean_ap
        assert abs(ap - ref_ap) <= 0.01, (name, ap, ref_ap)


def test_auto_choice_is_measured_explained_and_cached(model: FusionNet, cache) -> None:
    det = Detector(model, device="cpu", backend="auto")
    choice = det.choice
    assert choice is not None and not choice.cached
    assert choice.backend in CPU_BACKENDS and set(choice.timings_ms) == set(CPU_BACKENDS)
    assert bk.agrees(choice.parity[choice.backend])
    assert choice.timings_ms[choice.backend] == min(
        t for n, t in choice.timings_ms.items() if bk.agrees(choice.parity[n])
    )
    assert choice.backend in det.describe() and "CPU" in det.describe()
    again = Detector(model, device="cpu", backend="auto")
    assert again.choice.cached and again.backend_name == choice.backend
    assert (cache / "backend-choice.json").exists()


def test_a_backend_that_fails_is_skipped_and_the_choice_not_cached(model: FusionNet, cache):
    def make(name, *args, **kwargs):
        if name == "onnxruntime":
            raise RuntimeError("broken install")
        return bk.make_backend(name, *args, **kwargs)

    inputs = frame_inputs(model, 0)
    _, choice = bk.choose_backend(model, inputs, "digest-x", make=make)
    assert (
        "onnxruntime" not in choice.timings_ms and "failed to build: onnxruntime" in choice.reason
    )
    assert not (cache / "backend-choice.json").exists()


def test_a_backend_outside_the_tolerance_is_not_chosen(model: FusionNet) -> None:
    class Wrong:
        name = "openvino"

        def run(self, inputs):
            out = bk.TorchBackend(model).run(inputs)
            return out | {"heatmap": out["heatmap"] + 3.0}

    def make(name, *args, **kwargs):
        return Wrong() if name == "openvino" else bk.make_backend(name, *args, **kwargs)

    _, choice = bk.choose_backend(model, frame_inputs(model, 0), "digest-y", make=make)
    assert choice.backend != "openvino" and "outside parity tolerance: openvino" in choice.reason


def test_unknown_or_unavailable_backends_are_clear_errors(model: FusionNet) -> None:
    with pytest.raises(ModelError, match="not one of"):
        bk.make_backend("tensorrt", model, frame_inputs(model, 0), "d")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            Detector(model, device="cuda")
    if not bk.cpu_has_bf16():
        with pytest.raises(ModelError, match="native bf16"):
            bk.make_backend("torch-bf16", model, frame_inputs(model, 0), "d")


def test_cpu_summary_names_the_vector_features() -> None:
    line = bk.cpu_summary()
    assert "cores" in line and ("avx2" in line or "no AVX2" in line) and "bf16" in line
