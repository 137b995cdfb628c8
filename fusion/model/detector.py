"""The inference API the fusion node calls: load weights once, then per frame
``detect(image_bgr, radar_points, camera_model, mode)`` -> (detections, health).

`detect` is `preprocess` (numpy: resize, radar features and raster), `infer` (the network on
the chosen device) and `decode` (peaks -> boxes in the radar frame) in a row; a node that stamps
each stage or pipelines them calls the three itself.

Devices and precision: ``device="auto"`` takes CUDA when present (fp16 autocast, channels_last),
else the CPU with `threads` threads (2 by default) and, where the CPU has native bfloat16
(AVX-512 BF16 / AMX), channels_last + bf16 autocast, the fastest eager setting measured by
``benchmarks/test_model.py``. ``precision="fp32"`` forces full precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusion.errors import ModelError
from fusion.model import synthetic
from fusion.model.config import ModelConfig
from fusion.model.data import collate, prepare, radar_point_inputs, radar_raster
from fusion.model.decode import decode
from fusion.model.network import MODES, FusionNet, present_flags
from fusion.perception.geometry import CameraModel

#: The committed weights trained on the simulator's drives; the demo's default model.
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "sim_default.pt"
CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path | str, model: FusionNet, **extra: object) -> None:
    """Write model weights and config plus `extra` entries (optimiser, epoch, best metric,
    data) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": model.cfg.to_dict(),
        "model": model.state_dict(),
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str) -> tuple[FusionNet, dict]:
    """(model on CPU in eval mode, the whole checkpoint dict)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(
            f"no checkpoint at {path}; train one with `fusion train` or pass --weights"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a fusion checkpoint of format {CHECKPOINT_FORMAT}")
    model = FusionNet(ModelConfig.from_dict(state["config"]))
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    model.load_state_dict(weights)
    return model.eval(), state


def fold_batch_norms(model: torch.nn.Module) -> int:
    """Fold every BatchNorm that directly follows a Conv2d (or a BatchNorm1d after a Linear) in
    an `nn.Sequential` into that layer's weights, for inference: exact up to rounding, and it
    removes a separate pass over every feature map (about 15 % of the forward time, profiled).
    Returns how many were folded. The model must be in eval mode."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    assert not model.training, "fold batch norms only in eval mode"
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            layer, norm = seq[i], seq[i + 1]
            if isinstance(layer, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(layer, norm)
            elif isinstance(layer, torch.nn.Linear) and isinstance(norm, torch.nn.BatchNorm1d):
                seq[i] = fuse_linear_bn_eval(layer, norm)
            else:
                continue
            seq[i + 1] = torch.nn.Identity()
            folded += 1
    return folded


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for but CUDA is not available; use 'cpu'")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (else bf16 autocast is slower than fp32)."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


@dataclass
class Prepared:
    """One frame's network inputs (batch of 1) and its camera at the input size."""

    batch: dict[str, torch.Tensor]
    camera: CameraModel
    points: np.ndarray  # the radar points, for the radar range refinement in decoding
    mode: str = "fused"  # set by `infer`


class Detector:
    """A loaded model ready for frames; see the module docstring."""

    def __init__(
        self,
        model: FusionNet,
        device: str = "auto",
        threads: int = 2,
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        self.cfg = model.cfg
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        if precision == "auto":
            precision = {"cuda": "fp16"}.get(self.device.type, "bf16" if cpu_has_bf16() else "fp32")
        if precision not in ("fp32", "bf16", "fp16"):
            raise ModelError(f"precision {precision!r} is not one of auto, fp32, bf16, fp16")
        self.precision = precision
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.channels_last = self.device.type == "cuda" or precision != "fp32"
        model = model.eval()
        self.folded_batch_norms = fold_batch_norms(model)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(model, dynamic=True) if compile else model

    @classmethod
    def load(cls, path: Path | str = DEFAULT_WEIGHTS, **kwargs: object) -> Detector:
        model, _ = load_checkpoint(path)
        return cls(model, **kwargs)

    def preprocess(
        self, image_bgr: np.ndarray, radar_points: np.ndarray, camera_model: CameraModel
    ) -> Prepared:
        cfg = self.cfg
        camera = camera_model.scaled(cfg.input_w, cfg.input_h)
        features, cells = radar_point_inputs(radar_points, camera, cfg)
        item = {
            "image": prepare(image_bgr, cfg),
            "point_features": features,
            "point_cells": cells,
            "raster": radar_raster(radar_points, camera, cfg),
        }
        return Prepared(collate([item], self.device), camera, radar_points)

    @torch.inference_mode()
    def infer(self, prepared: Prepared, mode: str = "fused") -> dict[str, torch.Tensor]:
        if mode not in MODES:
            raise ModelError(f"mode {mode!r} is not one of {MODES}")
        prepared.mode = mode
        b = prepared.batch
        image = b["image"]
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        present = present_flags(mode, image.shape[0], self.device)
        args = (
            image,
            b["point_features"],
            b["point_cells"],
            b["point_valid"],
            b["raster"],
            present,
        )
        if self.dtype is None:
            return self.forward(*args)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.forward(*args)

    def decode(
        self, prepared: Prepared, raw: dict[str, torch.Tensor]
    ) -> tuple[np.ndarray, dict[str, float]]:
        points = None if prepared.mode == "camera_only" else [prepared.points]
        detections = decode(raw, [prepared.camera], self.cfg, points)[0]
        health = {k: float(raw[f"health_{k}"][0]) for k in ("score", "recon", "kl")}
        return detections, health

    def detect(
        self,
        image_bgr: np.ndarray,
        radar_points: np.ndarray,
        camera_model: CameraModel,
        mode: str = "fused",
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Detections (n,) `DETECTION_DTYPE` in the radar frame and the health scores
        ``{"score", "recon", "kl"}`` (higher = less like the training data)."""
        prepared = self.preprocess(image_bgr, radar_points, camera_model)
        return self.decode(prepared, self.infer(prepared, mode))

    def warm_up(self) -> None:
        """Run every mode once on a synthetic frame (allocations, oneDNN kernels, compile)."""
        from fusion.perception.preprocess import warm_up as warm_up_kernels

        warm_up_kernels()
        frame = synthetic.sample(np.random.default_rng(0), 3, self.cfg.input_w, self.cfg.input_h)
        for mode in MODES:
            self.detect(frame.image_bgr, frame.points, frame.camera, mode)
