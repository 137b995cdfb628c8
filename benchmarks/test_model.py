"""Model forward latency per backend, batch 1, at the shipped input sizes: PyTorch eager fp32
(the baseline), PyTorch eager with folded batch norms (what the ``torch`` backend runs),
torch-bf16 where the CPU has native bf16, ONNX Runtime and OpenVINO, in one run (ratios to eager
fp32); the whole `Detector.detect` on a shipped-size frame; and CUDA fp16 on a GPU. GFLOPs
(counted by `torch.utils.flop_counter`, one multiply-add = 2 FLOPs) go into the JSON.

Each configuration benchmarked: the committed simulator weights (384x224) and an Astyx-size
model (512x160, the real camera's input; untrained weights time the same). The CPU's features
are printed and stored so a figure always says which machine it came from.

Run: ``.venv/bin/pytest benchmarks/test_model.py --benchmark-only -q``. To measure what an
AVX2-only CPU gives with the oneDNN backends (PyTorch, OpenVINO) on a CPU with AVX-512, run
with ``ONEDNN_MAX_CPU_ISA=AVX2`` (ONNX Runtime's own kernels do not honour it).
Targets (DESIGN.md): p50 <= 15 ms and <= 0.5x eager fp32 on a 2-core AVX2 CPU; <= 3 ms fp16
on an H200 (the ``cuda`` case, skipped without CUDA; ``benchmarks/gpu.sh`` runs it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fusion.model import DEFAULT_WEIGHTS, Detector, FusionNet, load_weights
from fusion.model import backends as bk
from fusion.model.config import astyx_config
from fusion.model.inputs import encode_inputs
from fusion.model.synthetic import frame
from fusion.model.weights import model_digest

THREADS = 2
MODELS = ("sim", "astyx")
VARIANTS = ("eager_fp32", "torch", "torch-bf16", "onnxruntime", "openvino")


def model(which: str) -> FusionNet:
    if which == "sim":
        return load_weights(DEFAULT_WEIGHTS)[0]
    torch.manual_seed(0)
    return FusionNet(astyx_config(ground_plane=(-0.79, 0.045))).eval()


def inputs(net: FusionNet) -> dict[str, np.ndarray]:
    f = frame(np.random.default_rng(0), 6, 1280, 720).inputs
    arrays = encode_inputs(f, net.cfg)
    return {k: v[None] for k, v in arrays.items()} | {"present": np.ones((1, 2), np.float32)}


def gflops(net: FusionNet, batch: dict[str, np.ndarray]) -> float:
    counter = FlopCounterMode(display=False)
    args = [torch.from_numpy(batch[k]) for k in bk.INPUT_NAMES]
    with torch.no_grad(), counter:
        net(*args)
    return counter.get_total_flops() / 1e9


@pytest.fixture(scope="module", autouse=True)
def cpu_line(request) -> None:
    print(f"\nCPU: {bk.cpu_summary()}")


@pytest.mark.parametrize("which", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_cpu(benchmark, ratios, which: str, variant: str) -> None:
    if variant not in ("eager_fp32", *bk.available_backends("cpu")):
        pytest.skip(f"{variant} does not run on this CPU")
    torch.set_num_threads(THREADS)
    net = model(which)
    batch = inputs(net)
    size = f"{net.cfg.input_w}x{net.cfg.input_h}"
    benchmark.extra_info |= {"gflops": gflops(net, batch), "input": size, "cpu": bk.cpu_summary()}
    if variant == "eager_fp32":
        args = [torch.from_numpy(batch[k]) for k in bk.INPUT_NAMES]

        def run() -> None:
            with torch.inference_mode():
                net(*args)

    else:
        backend = bk.make_backend(variant, net, batch, model_digest(net), THREADS)

        def run() -> None:
            backend.run(batch)

    for _ in range(3):
        run()
    benchmark.group = f"model forward {which} {size}, batch 1, {THREADS} threads"
    benchmark.pedantic(run, rounds=40, warmup_rounds=2)
    ratios.add(
        f"model forward, batch 1, {THREADS} threads",
        f"{which} {size}",
        variant,
        benchmark.stats.stats.median * 1e3,
        baseline="eager_fp32",
    )


def test_detect_end_to_end_cpu(benchmark) -> None:
    """preprocess (a 1280x720 frame resized, the radar raster) + infer (the backend ``auto``
    chooses) + decode and health, as the fusion node calls it."""
    detector = Detector.load(DEFAULT_WEIGHTS, device="cpu", threads=THREADS)
    detector.warm_up()
    f = frame(np.random.default_rng(0), 6, 1280, 720).inputs
    benchmark.extra_info |= {"backend": detector.backend_name, "cpu": bk.cpu_summary()}
    print(f"\n{detector.describe()}")
    benchmark.pedantic(lambda: detector.detect(f.image_bgr, f.points, f.camera), rounds=30)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("which", MODELS)
def test_forward_cuda_fp16(benchmark, which: str) -> None:
    net = model(which)
    batch = inputs(net)
    backend = bk.make_backend("cuda-fp16", net, batch, model_digest(net))

    def run() -> None:
        backend.run(batch)  # returns numpy: includes the copy back and the synchronisation

    benchmark.extra_info["input"] = f"{net.cfg.input_w}x{net.cfg.input_h}"
    benchmark.pedantic(run, rounds=200, warmup_rounds=20)
