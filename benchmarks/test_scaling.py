"""How cost grows with the work: radar points per scan, image size, number of subscribers.

Three small tables, each as ratios to its smallest case in the same run:

- **radar points per scan** (100 -> 100k): the Numba BEV raster alone and the whole radar +
  image preprocessing of one frame (`Detector.preprocess`: the image resized and normalised,
  the radar raster).
- **image size** (VGA -> 720p -> 1080p BGR): JPEG decoding as the fusion node does it (reduced
  decoding down to the model input), `prepare_image` (resize + normalise to the 448x256 model
  input) and our transport's round trip over ipc (the `benchmarks._echo` rig).
- **subscribers** (1 -> 8 echo processes on one publisher, 720p BGR over ipc): the round trip
  until every subscriber acked, the cost of the publisher's `send` call, and the one-way
  delivery latency p50/p99 over all subscribers.

    .venv/bin/pytest benchmarks/test_scaling.py --benchmark-only -q
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmarks._echo import EchoRig
from benchmarks.test_preprocess import MODEL_H, MODEL_W, radar_points
from fusion.perception import preprocess as pp
from fusion.perception.image import decode_jpeg
from fusion.wire.messages import CameraFrame

POINTS = [100, 1_000, 10_000, 100_000]
IMAGE_SIZES = {
    "VGA 640x480": (640, 480),
    "720p 1280x720": (1280, 720),
    "1080p 1920x1080": (1920, 1080),
}
SUBSCRIBERS = [1, 2, 4, 8]
SUBSCRIBER_ROUNDS = 100
TRANSPORT_ROUNDS = 100


def points_label(n: int) -> str:
    return f"{n:,} points"


@pytest.fixture(scope="module")
def detector():
    """A `Detector` of the default config (untrained: preprocessing does not read weights)."""
    torch = pytest.importorskip("torch")
    from fusion.model import Detector, FusionNet, ModelConfig

    torch.manual_seed(0)
    pp.warm_up()
    return Detector(FusionNet(ModelConfig()), device="cpu", backend="torch", threads=2)


@pytest.mark.parametrize("n_points", POINTS)
def test_radar_raster_points(benchmark, ratios, n_points: int) -> None:
    pp.warm_up()
    points = radar_points(n_points)
    benchmark.group = "scaling: radar raster vs points"
    benchmark(pp.radar_bev_raster, points)
    ratios.add(
        "scaling: radar points per scan",
        "BEV raster (numba)",
        points_label(n_points),
        benchmark.stats.stats.median * 1e3,
        baseline=points_label(POINTS[0]),
    )


@pytest.mark.parametrize("n_points", POINTS)
def test_preprocess_points(benchmark, ratios, detector, n_points: int) -> None:
    from fusion.model import synthetic

    frame = synthetic.frame(np.random.default_rng(0), 6, 1280, 720).inputs
    points = radar_points(n_points)
    detector.preprocess(frame.image_bgr, points, frame.camera)  # allocations, caches
    benchmark.group = "scaling: Detector.preprocess vs points"
    benchmark(detector.preprocess, frame.image_bgr, points, frame.camera)
    ratios.add(
        "scaling: radar points per scan",
        "Detector.preprocess (720p frame)",
        points_label(n_points),
        benchmark.stats.stats.median * 1e3,
        baseline=points_label(POINTS[0]),
    )


def _image(size: str) -> np.ndarray:
    w, h = IMAGE_SIZES[size]
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    scene = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], axis=-1)
    return np.clip(scene + rng.normal(0, 4, scene.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", list(IMAGE_SIZES))
def test_jpeg_decode_size(benchmark, ratios, size: str) -> None:
    w, h = IMAGE_SIZES[size]
    ok, jpeg = cv2.imencode(".jpg", _image(size), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    benchmark.group = "scaling: JPEG decode vs image size"
    benchmark(decode_jpeg, jpeg, w, h, MODEL_W, MODEL_H)
    ratios.add(
        "scaling: image size",
        "JPEG decode (reduced to >= model input)",
        size,
        benchmark.stats.stats.median * 1e3,
        baseline=next(iter(IMAGE_SIZES)),
    )


@pytest.mark.parametrize("size", list(IMAGE_SIZES))
def test_prepare_image_size(benchmark, ratios, size: str) -> None:
    pp.warm_up()
    image = _image(size)
    benchmark.group = "scaling: prepare_image vs image size"
    benchmark(pp.prepare_image, image, MODEL_W, MODEL_H)
    ratios.add(
        "scaling: image size",
        f"prepare_image -> {MODEL_W}x{MODEL_H}",
        size,
        benchmark.stats.stats.median * 1e3,
        baseline=next(iter(IMAGE_SIZES)),
    )


@pytest.mark.parametrize("size", list(IMAGE_SIZES))
def test_transport_size(benchmark, ratios, ipc_dir, size: str) -> None:
    msg = CameraFrame(image=_image(size))
    with EchoRig("ours", "ipc", ipc_dir, "camera", msg) as rig:
        benchmark.group = "scaling: transport round trip vs image size"
        benchmark.pedantic(rig.round_trip, rounds=TRANSPORT_ROUNDS, iterations=1, warmup_rounds=5)
        one_way = rig.finish()
    benchmark.extra_info["one_way_p50_ms"] = float(np.percentile(one_way, 50))
    ratios.add(
        "scaling: image size",
        "transport round trip (ours, ipc)",
        size,
        benchmark.stats.stats.median * 1e3,
        baseline=next(iter(IMAGE_SIZES)),
    )


def subscribers_label(n: int) -> str:
    return f"{n} subscriber" + ("s" if n > 1 else "")


@pytest.mark.parametrize("subscribers", SUBSCRIBERS)
def test_subscribers(benchmark, ratios, ipc_dir, subscribers: int) -> None:
    msg = CameraFrame(image=_image("720p 1280x720"))
    with EchoRig("ours", "ipc", ipc_dir, "camera", msg, subscribers=subscribers) as rig:
        benchmark.group = "scaling: 720p to N subscribers"
        benchmark.pedantic(rig.round_trip, rounds=SUBSCRIBER_ROUNDS, iterations=1, warmup_rounds=5)
        one_way = rig.finish()
        send_ms = float(np.median(rig.send_s)) * 1e3
    assert len(one_way) == subscribers * (SUBSCRIBER_ROUNDS + 5)
    figures = {
        "round trip, all acked": benchmark.stats.stats.median * 1e3,
        "publisher send call": send_ms,
        "delivery one-way p50": float(np.percentile(one_way, 50)),
        "delivery one-way p99": float(np.percentile(one_way, 99)),
    }
    benchmark.extra_info.update({k.replace(" ", "_"): v for k, v in figures.items()})
    for row, value_ms in figures.items():
        ratios.add(
            "scaling: subscribers (720p BGR, ours, ipc)",
            row,
            subscribers_label(subscribers),
            value_ms,
            baseline=subscribers_label(SUBSCRIBERS[0]),
        )
