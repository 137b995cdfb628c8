"""The inference API the fusion node calls: load weights once, then per frame
``detect(image_bgr, radar_points, camera_model, mode)`` -> (detections, health).

`detect` is three stages a node stamps separately: `preprocess` (numpy and Numba: the image
resized and normalised, the radar raster, the cached lift grid; `fusion.model.inputs`),
`infer` (the network on the chosen backend) and `decode` (peaks -> boxes in the radar frame,
and the health report of `fusion.model.health`).

Backends (`fusion.model.backends`): ``backend="auto"`` measures the candidates on this machine
during construction and keeps the fastest whose outputs agree with fp32 PyTorch (cached per CPU,
versions and weights); ``device="cuda"`` (or auto with a GPU) runs fp16 on the GPU. A `Detector`
keeps the previous frame's image for the frozen-camera cue, so use one per camera stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fusion.errors import ModelError
from fusion.model import backends as bk
from fusion.model.decode import decode
from fusion.model.health import HealthCues, health_report
from fusion.model.inputs import LiftGridCache, encode_inputs
from fusion.model.network import MODES, FusionNet
from fusion.model.weights import DEFAULT_WEIGHTS, load_weights, model_digest
from fusion.perception.frame import FrameInputs
from fusion.perception.geometry import CameraModel

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One frame's network inputs (numpy, no batch axis) and what decoding needs."""

    inputs: dict[str, np.ndarray]
    mode: str = "fused"  # set by `infer`
    timings_ms: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for but CUDA is not available; use 'cpu'")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"device {device!r} is not one of auto, cpu, cuda")
    return device


class Detector:
    """A loaded model ready for frames; see the module docstring."""

    def __init__(
        self,
        model: FusionNet,
        device: str = "auto",
        threads: int = 2,
        backend: str = "auto",
    ) -> None:
        self.cfg = model.cfg
        self.device = resolve_device(device)
        self.threads = threads
        self.grids = LiftGridCache(self.cfg)
        self.cues = HealthCues()
        self.digest = model_digest(model)
        example = self._example_inputs()
        if backend == "auto":
            if self.device == "cuda":
                backend = "cuda-fp16"
            else:
                self.backend, self.choice = bk.choose_backend(
                    model, example, self.digest, "cpu", threads
                )
                return
        self.backend = bk.make_backend(backend, model, example, self.digest, threads)
        self.choice = None

    @classmethod
    def load(cls, path: Path | str = DEFAULT_WEIGHTS, **kwargs: object) -> Detector:
        model, _ = load_weights(path)
        return cls(model, **kwargs)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def describe(self) -> str:
        """One line for logs and reports: backend, why, and the CPU."""
        why = f" ({self.choice.reason})" if self.choice else ""
        return f"backend {self.backend.name}{why}; CPU: {bk.cpu_summary()}"

    def _example_inputs(self) -> dict[str, np.ndarray]:
        cfg = self.cfg
        rows, cols = cfg.grid_shape("raster")
        hr, hc = cfg.grid_shape("head")
        rng = np.random.default_rng(0)
        grid = rng.uniform(-1.1, 1.1, (1, len(cfg.lift_heights_m), hr, hc, 2))
        return {
            "image": rng.normal(0, 1, (1, 3, cfg.input_h, cfg.input_w)).astype(np.float32),
            "raster": (rng.random((1, 9, rows, cols)) < 0.02).astype(np.float32),
            "grid": grid.astype(np.float32),
            "present": np.ones((1, 2), np.float32),
        }

    def preprocess(
        self, image_bgr: np.ndarray, radar_points: np.ndarray, camera_model: CameraModel
    ) -> Prepared:
        frame = FrameInputs(image_bgr, radar_points, camera_model)
        return Prepared(encode_inputs(frame, self.cfg, self.grids))

    def infer(self, prepared: Prepared, mode: str = "fused") -> dict[str, np.ndarray]:
        if mode not in MODES:
            raise ModelError(f"mode {mode!r} is not one of {MODES}")
        prepared.mode = mode
        camera = 0.0 if mode == "radar_only" else 1.0
        radar = 0.0 if mode == "camera_only" else 1.0
        batch = {k: v[None] for k, v in prepared.inputs.items()}
        batch["present"] = np.array([[camera, radar]], np.float32)
        return self.backend.run(batch)

    def decode(
        self, prepared: Prepared, raw: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, float]]:
        detections = decode(raw, self.cfg)[0]
        cues = self.cues(prepared.inputs, prepared.mode)
        if prepared.mode == "fused":  # the VAE models frames with both sensors
            cues["vae"] = float(raw["vae_score"][0])
        return detections, health_report(cues, self.cfg)

    def detect(
        self,
        image_bgr: np.ndarray,
        radar_points: np.ndarray,
        camera_model: CameraModel,
        mode: str = "fused",
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Detections (n,) `DETECTION_DTYPE` in the radar frame and the health report."""
        prepared = self.preprocess(image_bgr, radar_points, camera_model)
        return self.decode(prepared, self.infer(prepared, mode))

    def warm_up(self) -> None:
        """Compile the Numba kernels and run every mode once on a synthetic frame, so the first
        real frame pays no compile or allocation pause; the health cues start afresh."""
        from fusion.model.synthetic import frame
        from fusion.perception.preprocess import warm_up as warm_up_kernels

        warm_up_kernels()
        inputs = frame(np.random.default_rng(0)).inputs
        for mode in MODES:
            self.detect(inputs.image_bgr, inputs.points, inputs.camera, mode)
        self.cues.reset()
