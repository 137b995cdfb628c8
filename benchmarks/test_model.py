"""Model forward latency, batch 1, at the default input (448x256): eager fp32 against
channels_last, channels_last + bf16 autocast and torch.compile + bf16, in one run (ratios to
fp32), plus the VAE alone and the whole `Detector.detect` on a 1280x720 frame. GFLOPs (counted
by `torch.utils.flop_counter`, one multiply-add = 2 FLOPs) go into the JSON as extra_info.

Run: ``.venv/bin/pytest benchmarks/test_model.py --benchmark-only -q`` (CPU, 2 threads; set
``FUSION_BENCH_COMPILE=1`` to include torch.compile, which compiles for a minute or two).
Target (DESIGN.md): p50 <= 25 ms on the 2-core CPU; <= 3 ms fp16 on a GPU (the ``cuda``
cases, skipped without CUDA; ``benchmarks/gpu_model.sh`` runs them).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fusion.model import (
    DEFAULT_WEIGHTS,
    Detector,
    FusionNet,
    ModelConfig,
    load_checkpoint,
    synthetic,
)
from fusion.model.detector import cpu_has_bf16

THREADS = 2

VARIANTS = ["fp32", "channels_last", "channels_last_bf16", "compile_bf16"]


def model() -> FusionNet:
    if DEFAULT_WEIGHTS.exists():
        return load_checkpoint(DEFAULT_WEIGHTS)[0]
    torch.manual_seed(0)
    return FusionNet(ModelConfig()).eval()


def frame_inputs(net: FusionNet, device: str = "cpu") -> tuple[tuple, Detector]:
    detector = Detector(net, device=device, precision="fp32", threads=THREADS)
    frame = synthetic.sample(np.random.default_rng(0), 6, 1280, 720)
    prepared = detector.preprocess(frame.image_bgr, frame.points, frame.camera)
    b = prepared.batch
    present = torch.ones(1, 2, device=device)
    return (
        b["image"],
        b["point_features"],
        b["point_cells"],
        b["point_valid"],
        b["raster"],
        present,
    ), detector


def gflops(net: FusionNet, args: tuple) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(*args)
    return counter.get_total_flops() / 1e9


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_cpu(benchmark, ratios, variant: str) -> None:
    if "bf16" in variant and not cpu_has_bf16():
        pytest.skip("this CPU has no native bfloat16")
    if variant.startswith("compile") and not os.environ.get("FUSION_BENCH_COMPILE"):
        pytest.skip("set FUSION_BENCH_COMPILE=1 to benchmark torch.compile (slow to compile)")
    torch.set_num_threads(THREADS)
    net = model()
    args, _ = frame_inputs(net)
    benchmark.extra_info["gflops"] = gflops(net, args)
    benchmark.extra_info["input"] = f"{net.cfg.input_w}x{net.cfg.input_h}"
    if variant != "fp32":
        net = net.to(memory_format=torch.channels_last)
        args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    forward = net
    if variant.startswith("compile"):
        torch._inductor.config.freezing = True
        forward = torch.compile(net)
    use_bf16 = variant.endswith("bf16")

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=use_bf16):
            forward(*args)

    for _ in range(3):
        run()
    benchmark.group = "model forward, batch 1, 2 threads"
    benchmark.pedantic(run, rounds=40, warmup_rounds=2)
    ratios.add(
        "model forward 448x256 (2 threads)",
        "batch 1",
        variant,
        benchmark.stats.stats.median * 1e3,
        baseline="fp32",
    )


def test_vae_alone_cpu(benchmark, ratios) -> None:
    """What the health score costs on top of detection."""
    torch.set_num_threads(THREADS)
    net = model()
    cfg = net.cfg
    features = torch.randn(1, cfg.pyramid_channels + cfg.radar_channels, cfg.grid_h, cfg.grid_w)
    with torch.inference_mode():
        benchmark.pedantic(lambda: net.vae(features), rounds=200, warmup_rounds=5)
    ratios.add(
        "model forward 448x256 (2 threads)",
        "batch 1",
        "vae_only",
        benchmark.stats.stats.median * 1e3,
        baseline="fp32",
    )


def test_detect_end_to_end_cpu(benchmark) -> None:
    """preprocess (resize 1280x720, radar features, raster) + infer (default precision) +
    decode, as the fusion node calls it."""
    detector = Detector(model(), device="cpu", threads=THREADS)
    detector.warm_up()
    frame = synthetic.sample(np.random.default_rng(0), 6, 1280, 720)
    benchmark.extra_info["precision"] = detector.precision
    benchmark.pedantic(
        lambda: detector.detect(frame.image_bgr, frame.points, frame.camera), rounds=30
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_forward_cuda_fp16(benchmark) -> None:
    net = model()
    detector = Detector(net, device="cuda", precision="fp16")
    frame = synthetic.sample(np.random.default_rng(0), 6, 1280, 720)
    prepared = detector.preprocess(frame.image_bgr, frame.points, frame.camera)

    def run() -> None:
        detector.infer(prepared)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=200, warmup_rounds=20)
