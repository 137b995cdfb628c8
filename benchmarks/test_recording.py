"""Recording throughput on a camera-heavy drive, against writing/reading the same bytes plainly.

The drive: 100 bgr8 1280x720 camera frames (20 Hz, 5 s; smooth synthetic scenes with sensor
noise, so zstd has realistic work) and 65 radar scans of 1000 points (13 Hz). Each benchmark
reports MB/s (payload bytes: wire headers and buffers) and messages/s; the last one prints them
side by side, as ratios to the plain file of the same bytes in the same run.

    .venv/bin/pytest benchmarks/test_recording.py -s
"""

from __future__ import annotations

import numpy as np
import pytest

from fusion.logs.reader import RecordingReader
from fusion.logs.writer import RecordingWriter
from fusion.wire import codec
from fusion.wire.messages import RADAR_POINT_DTYPE, CameraFrame, RadarScan

CAMERA_FRAMES = 100
RADAR_SCANS = 65
DISTINCT_IMAGES = 10  # cycled, to keep memory small; chunks are compressed independently
ROUNDS = 3
RESULTS: dict[str, tuple[float, float]] = {}  # name -> (MB/s, messages/s)


def _scene(rng: np.random.Generator, i: int) -> np.ndarray:
    y, x = np.mgrid[0:720, 0:1280].astype(np.float32)
    base = np.stack([(x + 7 * i) / 5.0, (y + 3 * i) / 3.0, (x + y) / 8.0], axis=-1)
    noise = rng.normal(0.0, 3.0, base.shape)
    return np.clip(base % 256 + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def drive() -> list[tuple[str, list, int, int]]:
    """(topic, wire frames, log time, capture time) in log-time order."""
    rng = np.random.default_rng(0)
    images = [_scene(rng, i) for i in range(DISTINCT_IMAGES)]
    out = []
    for i in range(CAMERA_FRAMES):
        t = i * 50_000_000
        msg = CameraFrame(image=images[i % DISTINCT_IMAGES], seq=i, capture_ns=t)
        out.append(("camera", codec.encode("camera", msg), t + 2_000_000, t))
    for i in range(RADAR_SCANS):
        t = int(i * 1e9 / 13)
        points = np.zeros(1000, RADAR_POINT_DTYPE)
        points["x"] = rng.uniform(0, 80, 1000)
        points["y"] = rng.uniform(-20, 20, 1000)
        points["v_r"] = rng.normal(0, 5, 1000)
        msg = RadarScan(points=points, seq=i, capture_ns=t)
        out.append(("radar", codec.encode("radar", msg), t + 1_000_000, t))
    out.sort(key=lambda m: m[2])
    return out


def _payload_bytes(drive) -> int:
    return sum(len(f) for _, frames, _, _ in drive for f in frames[1:])


def _record(benchmark, name: str, drive) -> None:
    seconds = benchmark.stats.stats.median
    mb_s = _payload_bytes(drive) / seconds / 1e6
    msgs_s = len(drive) / seconds
    RESULTS[name] = (mb_s, msgs_s)
    benchmark.extra_info.update(mb_per_s=round(mb_s, 1), messages_per_s=round(msgs_s, 1))
    print(f"\n{name}: {mb_s:.0f} MB/s, {msgs_s:.0f} messages/s")


def test_write_plain_file(benchmark, drive, tmp_path) -> None:
    def write() -> None:
        with open(tmp_path / "plain.bin", "wb") as f:
            for _, frames, _, _ in drive:
                for frame in frames[1:]:
                    f.write(frame)

    benchmark.pedantic(write, rounds=ROUNDS, iterations=1)
    _record(benchmark, "write plain file", drive)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_write_recording(benchmark, drive, tmp_path, compression: str) -> None:
    path = tmp_path / f"{compression}.mcap"

    def write() -> None:
        with RecordingWriter(path, compression=compression) as writer:
            for topic, frames, log_ns, capture_ns in drive:
                writer.write_frames(topic, frames, log_ns, capture_ns)

    benchmark.pedantic(write, rounds=ROUNDS, iterations=1)
    _record(benchmark, f"write recording ({compression})", drive)
    size_mb, payload_mb = path.stat().st_size / 1e6, _payload_bytes(drive) / 1e6
    print(f"  file {size_mb:.0f} MB for {payload_mb:.0f} MB payload")


def test_read_plain_file(benchmark, drive, tmp_path) -> None:
    sizes = [len(f) for _, frames, _, _ in drive for f in frames[1:]]
    with open(tmp_path / "plain.bin", "wb") as f:
        for _, frames, _, _ in drive:
            for frame in frames[1:]:
                f.write(frame)

    def read() -> int:
        total = 0
        with open(tmp_path / "plain.bin", "rb") as f:
            for size in sizes:
                total += len(f.read(size))
        return total

    assert benchmark.pedantic(read, rounds=ROUNDS, iterations=1) == sum(sizes)
    _record(benchmark, "read plain file", drive)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_read_recording(benchmark, drive, tmp_path, compression: str) -> None:
    path = tmp_path / "r.mcap"
    with RecordingWriter(path, compression=compression) as writer:
        for topic, frames, log_ns, capture_ns in drive:
            writer.write_frames(topic, frames, log_ns, capture_ns)

    def read() -> int:
        count = 0
        with RecordingReader(path) as reader:
            for rec in reader.messages():
                rec.decode()
                count += 1
        return count

    assert benchmark.pedantic(read, rounds=ROUNDS, iterations=1) == len(drive)
    _record(benchmark, f"read + decode recording ({compression})", drive)


def test_print_table() -> None:
    if not RESULTS:
        pytest.skip("run with the benchmarks above")
    write_base = RESULTS.get("write plain file", (float("nan"),))[0]
    read_base = RESULTS.get("read plain file", (float("nan"),))[0]
    print(f"\n{'':36} {'MB/s':>8} {'msgs/s':>8} {'vs plain':>9}")
    for name, (mb_s, msgs_s) in RESULTS.items():
        base = write_base if name.startswith("write") else read_base
        print(f"{name:36} {mb_s:8.0f} {msgs_s:8.0f} {mb_s / base:8.2f}x")
