"""Inference backends behind `Detector`, each running the same weights, and the choice by
measurement.

Every input of the network has a fixed shape (the image at the input size, the radar raster on
its grid, the lift grid, two mode flags), so one exported graph serves every frame, mode and
radar point count. The backends:

- ``torch``: PyTorch eager, fp32, batch norms folded into the convolutions;
- ``torch-bf16``: the same under bfloat16 autocast with channels_last, offered only where the
  CPU runs bf16 natively (AVX-512 BF16 / AMX); elsewhere emulated bf16 is slower than fp32;
- ``onnxruntime``: the graph exported with `torch.onnx` to a cached ``.onnx`` file, run by ONNX
  Runtime's CPU provider;
- ``openvino``: the same ``.onnx`` compiled by OpenVINO for the CPU, fp32;
- ``cuda-fp16``: PyTorch on CUDA under fp16 autocast, where a GPU is present.

`choose_backend` (``--backend auto``) times every candidate on this machine with the real
model, keeps those whose outputs agree with fp32 PyTorch within `PARITY_TOLERANCE`, takes the
fastest, and caches the choice per CPU model, backend versions and weights digest
(`choice_key`), so later starts skip the timing; it logs what it chose and why.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fusion.errors import ModelError
from fusion.model.network import FusionNet

log = logging.getLogger(__name__)

INPUT_NAMES = ("image", "raster", "grid", "present")
OUTPUT_NAMES = (
    "heatmap",
    "offset",
    "z",
    "log_dims",
    "yaw",
    "velocity",
    "vae_recon",
    "vae_kl",
    "vae_score",
)
BACKENDS = ("torch", "torch-bf16", "onnxruntime", "openvino", "cuda-fp16")
ONNX_OPSET = 17
#: Largest difference from fp32 PyTorch a backend may show to be chosen: heatmap probability,
#: and the box regressions (cells, metres, log size, sin/cos, m/s) at the `PARITY_CELLS` most
#: confident cells.
PARITY_TOLERANCE = {"heatmap": 0.03, "boxes": 0.1}
PARITY_CELLS = 50
TIMING_RUNS = 12


class Backend(Protocol):
    name: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batch-1 float32 inputs by `INPUT_NAMES` -> float32 outputs by `OUTPUT_NAMES`."""
        ...


def cache_dir() -> Path:
    """Where exported graphs and backend choices are kept (``FUSION_CACHE_DIR`` moves it)."""
    root = os.environ.get("FUSION_CACHE_DIR") or Path.home() / ".cache" / "fusion"
    return Path(root)


def _cpuinfo(field: str) -> str | None:
    """The first value of `field` in /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (else bf16 autocast is slower than fp32)."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def cpu_summary() -> str:
    """One line: the CPU model, core count and the vector features that decide the backends."""
    flags = cpu_flags()
    features = [
        f
        for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
        if f in flags
    ]
    bf16 = "native bf16" if cpu_has_bf16() else "no native bf16"
    return f"{cpu_name()}, {os.cpu_count()} cores, {' '.join(features) or 'no AVX2'} ({bf16})"


def available_backends(device: str = "cpu") -> list[str]:
    """The backends that can run here for `device` ("cpu" or "cuda")."""
    if device == "cuda":
        return ["cuda-fp16"] if torch.cuda.is_available() else []
    names = ["torch"]
    if cpu_has_bf16():
        names.append("torch-bf16")
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            __import__(module)
            names.append(name)
        except ImportError:
            pass
    return names


def backend_versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    for module in ("onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            versions[module] = __import__(module).__version__
    return versions


class _Outputs(torch.nn.Module):
    """The network with tuple outputs in `OUTPUT_NAMES` order (what export needs)."""

    def __init__(self, model: FusionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image, raster, grid, present):
        out = self.model(image, raster, grid, present)
        return tuple(out[name] for name in OUTPUT_NAMES)


class TorchBackend:
    def __init__(
        self, model: FusionNet, device: str = "cpu", precision: str = "fp32", threads: int = 2
    ) -> None:
        self.name = {"fp32": "torch", "bf16": "torch-bf16", "fp16": "cuda-fp16"}[precision]
        self.device = torch.device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        model = fold_batch_norms(copy.deepcopy(model).eval()).to(self.device)
        self.channels_last = precision != "fp32" or self.device.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    @torch.inference_mode()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [
            torch.from_numpy(np.ascontiguousarray(inputs[k])).to(self.device) for k in INPUT_NAMES
        ]
        if self.channels_last:
            args[0] = args[0].contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            out = self.model(*args)
        return {k: out[k].float().cpu().numpy() for k in OUTPUT_NAMES}


def export_onnx(model: FusionNet, path: Path, example: dict[str, np.ndarray]) -> Path:
    """Export `model` (fixed shapes of `example`) to `path` unless it is there already."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[k])) for k in INPUT_NAMES)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about shape arithmetic, all static here
        torch.onnx.export(
            _Outputs(model).eval(),
            args,
            str(tmp),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    tmp.replace(path)
    return path


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int = 2) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(inputs[k], np.float32) for k in INPUT_NAMES}
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feed), strict=True))


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, onnx_path: Path, threads: int = 2) -> None:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            str(onnx_path),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": "f32",
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
            },
        )
        self.request = compiled.create_infer_request()
        self.outputs = [compiled.output(name) for name in OUTPUT_NAMES]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(inputs[k], np.float32) for k in INPUT_NAMES}
        result = self.request.infer(feed)
        return {
            name: np.asarray(result[port])
            for name, port in zip(OUTPUT_NAMES, self.outputs, strict=True)
        }


def make_backend(
    name: str,
    model: FusionNet,
    example: dict[str, np.ndarray],
    digest: str,
    threads: int = 2,
) -> Backend:
    """Build backend `name` for `model`; `example` fixes the exported shapes and `digest` names
    the cached ``.onnx`` file."""
    if name not in BACKENDS:
        raise ModelError(f"backend {name!r} is not one of {BACKENDS} (or auto)")
    if name == "torch":
        return TorchBackend(model, "cpu", "fp32", threads)
    if name == "torch-bf16":
        if not cpu_has_bf16():
            raise ModelError("backend torch-bf16 needs a CPU with native bf16; use auto or torch")
        return TorchBackend(model, "cpu", "bf16", threads)
    if name == "cuda-fp16":
        if not torch.cuda.is_available():
            raise ModelError("backend cuda-fp16 asked for but CUDA is not available")
        return TorchBackend(model, "cuda", "fp16", threads)
    onnx_path = cache_dir() / "onnx" / f"{digest}-opset{ONNX_OPSET}-torch{torch.__version__}.onnx"
    export_onnx(model, onnx_path, example)
    try:
        if name == "onnxruntime":
            return OnnxRuntimeBackend(onnx_path, threads)
        return OpenVinoBackend(onnx_path, threads)
    except ImportError as exc:
        raise ModelError(f"backend {name} is not installed ({exc}); use auto or torch") from exc


def parity(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest heatmap-probability and box-regression differences of `other` from
    `reference`; regressions are compared at the reference's `PARITY_CELLS` most confident
    cells (where decoding reads them)."""
    p_ref = 1 / (1 + np.exp(-reference["heatmap"].astype(np.float64)))
    p_other = 1 / (1 + np.exp(-other["heatmap"].astype(np.float64)))
    confidence = p_ref.max(axis=1).reshape(len(p_ref), -1)  # (B, cells)
    top = np.argsort(-confidence, axis=1)[:, :PARITY_CELLS]
    box = 0.0
    for name in ("offset", "z", "log_dims", "yaw", "velocity"):
        ref = reference[name].reshape(*reference[name].shape[:2], -1)
        oth = other[name].reshape(*other[name].shape[:2], -1)
        for b in range(len(top)):
            box = max(box, float(np.abs(ref[b][:, top[b]] - oth[b][:, top[b]]).max()))
    return {"heatmap": float(np.abs(p_ref - p_other).max()), "boxes": box}


def agrees(differences: dict[str, float]) -> bool:
    return all(differences[k] <= PARITY_TOLERANCE[k] for k in PARITY_TOLERANCE)


def time_backend(backend: Backend, inputs: dict[str, np.ndarray], runs: int = TIMING_RUNS) -> float:
    """Median milliseconds per call after two warm-up calls."""
    for _ in range(2):
        backend.run(inputs)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        backend.run(inputs)
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


@dataclass
class Choice:
    backend: str
    timings_ms: dict[str, float]
    parity: dict[str, dict[str, float]]
    reason: str
    cached: bool = False


def choice_key(digest: str, device: str) -> str:
    versions = ",".join(f"{k}={v}" for k, v in sorted(backend_versions().items()))
    return f"{cpu_name()}|{os.cpu_count()}|{device}|{versions}|{digest}"


def choose_backend(
    model: FusionNet,
    inputs: dict[str, np.ndarray],
    digest: str,
    device: str = "cpu",
    threads: int = 2,
    make: Callable[..., Backend] = make_backend,
) -> tuple[Backend, Choice]:
    """The fastest backend here whose outputs agree with fp32 PyTorch on `inputs`, and why;
    a choice cached for this CPU, these versions and these weights is reused untimed."""
    key = choice_key(digest, device)
    cache_file = cache_dir() / "backend-choice.json"
    cached = _read_cache(cache_file).get(key)
    names = available_backends(device)
    if cached and cached.get("backend") in names:
        choice = Choice(**{**cached, "cached": True})
        log.info("backend %s (cached choice: %s)", choice.backend, choice.reason)
        return make(choice.backend, model, inputs, digest, threads), choice
    reference = TorchBackend(model, "cpu", "fp32", threads).run(inputs)
    timings, parities, built, failed = {}, {}, {}, []
    for name in names:
        try:
            backend = make(name, model, inputs, digest, threads)
        except Exception as exc:  # a backend that fails to build is skipped, not fatal
            log.warning("backend %s unavailable: %s", name, exc)
            failed.append(name)
            continue
        parities[name] = parity(reference, backend.run(inputs))
        timings[name] = time_backend(backend, inputs)
        built[name] = backend
    agreeing = [n for n in timings if n == "torch" or agrees(parities[n])]
    if not agreeing:
        raise ModelError("no backend agrees with fp32 PyTorch; run with --backend torch")
    best = min(agreeing, key=timings.__getitem__)
    rejected = [n for n in timings if n not in agreeing]
    reason = ", ".join(f"{n} {timings[n]:.1f} ms" for n in sorted(timings, key=timings.get))
    if rejected:
        reason += "; outside parity tolerance: " + ", ".join(rejected)
    if failed:
        reason += "; failed to build: " + ", ".join(failed)
    choice = Choice(best, timings, parities, reason)
    log.info("backend %s chosen by measurement: %s", best, reason)
    if not failed:  # a choice made without every candidate is not worth keeping
        _write_cache(cache_file, key, choice)
    return built[best], choice


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, choice: Choice) -> None:
    data = _read_cache(path)
    data[key] = {
        "backend": choice.backend,
        "timings_ms": choice.timings_ms,
        "parity": choice.parity,
        "reason": choice.reason,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as exc:  # a read-only home only costs the timing at the next start
        log.warning("could not cache the backend choice in %s: %s", path, exc)


def fold_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, for inference: in
    `nn.Sequential`s (conv, bn, act) and in the backbone's MBConv blocks. Exact up to rounding;
    it removes a pass over every feature map. The model must be in eval mode."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from fusion.model.efficientnet import MBConv
    from fusion.model.network import FrozenBackbone

    assert not model.training, "fold batch norms only in eval mode"
    for module in list(model.modules()):
        if isinstance(module, torch.nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = torch.nn.Identity()
        elif isinstance(module, MBConv | FrozenBackbone):
            module.fold()
    return model
