"""What ``fusion record --foxglove`` costs the recorder per camera frame, against the msgpack
write alone, in the same run.

One frame of the stream is what the recorder writes per camera frame: the frame, a radar scan
(the radar runs at 13 Hz, so this rounds up) and the frame's `Detections` (20 objects, with a
full trace), each message already decoded as the recorder has it. Two cameras: the shipped
drives' JPEG (960x540, its bytes go into ``foxglove.CompressedImage`` as they are) and a raw
bgr8 1280x720 frame (2.8 MB into ``foxglove.RawImage``: the worst case). The budget: the camera
runs at 20 Hz, so the recorder must take less than 50 ms per frame to stay real time, and it
shares the CPU with the rest of the graph.

    .venv/bin/pytest benchmarks/test_views.py -s
"""

from __future__ import annotations

import numpy as np
import pytest

from fusion.logs.foxglove import FoxgloveChannels
from fusion.logs.reader import RecordingReader
from fusion.logs.writer import RecordingWriter
from fusion.wire import codec
from fusion.wire.messages import DETECTION_DTYPE, CameraFrame, Detections, Message, RadarScan
from tests.test_recording import MS

CITY = "recordings/city.mcap"
FRAMES = 40  # 2 s of camera
ROUNDS = 5
OBJECTS = 20
#: A camera frame's period at 20 Hz: the recorder's budget per frame to stay real time.
BUDGET_MS = 50.0
TABLE = "recorder cost per camera frame (frame + radar scan + detections)"
MSGPACK = "msgpack only"
BOTH = "msgpack + foxglove"

#: A frame of the stream: (topic, decoded message, its wire frames, log time) each.
Frame = list[tuple[str, Message, list, int]]


def _detections(seq: int, capture_ns: int) -> Detections:
    rng = np.random.default_rng(seq)
    objects = np.zeros(OBJECTS, DETECTION_DTYPE)
    for name in ("x", "y", "yaw", "vx", "vy"):
        objects[name] = rng.normal(0, 10, OBJECTS)
    objects["l"], objects["w"], objects["h"], objects["score"] = 4.0, 2.0, 1.5, 0.8
    hops = ("input_published", "received", "synced", "preprocessed", "inferred", "decoded")
    return Detections(
        objects=objects,
        seq=seq,
        capture_ns=capture_ns,
        trace={hop: capture_ns + (i + 1) * MS for i, hop in enumerate(hops)},
        source_seqs={"camera": seq},
        health={"score": 0.2, "recon": 1.0, "kl": 0.1},
    )


def _frame(topic_msgs: list[tuple[str, Message]], log_ns: int) -> Frame:
    return [(t, m, codec.encode(t, m), log_ns) for t, m in topic_msgs]


@pytest.fixture(scope="module", params=["jpeg 960x540", "bgr8 1280x720"])
def stream(request) -> tuple[str, list[Frame]]:
    with RecordingReader(CITY) as reader:
        cameras = [r.decode() for r in reader.messages("camera")][:FRAMES]
        scans = [r.decode() for r in reader.messages("radar")][:FRAMES]
    raw = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    frames = []
    for i, (camera, scan) in enumerate(zip(cameras, scans, strict=False)):
        t = i * 50 * MS
        if request.param.startswith("bgr8"):
            camera = CameraFrame(image=raw, seq=i, capture_ns=t, sensor_id="camera_front")
        assert isinstance(scan, RadarScan)
        msgs = [("camera", camera), ("radar", scan), ("detections", _detections(i, t))]
        frames.append(_frame(msgs, t + 2 * MS))
    return request.param, frames


def _write(path, frames: list[Frame], foxglove: bool) -> None:
    with RecordingWriter(path) as writer:
        views = FoxgloveChannels(writer) if foxglove else None
        for frame in frames:
            for topic, msg, wire, log_ns in frame:
                writer.write_frames(topic, wire, log_ns, msg.capture_ns, sequence=msg.seq)
                if views is not None:
                    views.write(topic, msg, log_ns)


@pytest.mark.parametrize("column", [MSGPACK, BOTH])
def test_recorder_write_per_frame(benchmark, stream, tmp_path, ratios, column: str) -> None:
    camera, frames = stream
    benchmark.pedantic(
        _write, args=(tmp_path / "r.mcap", frames, column == BOTH), rounds=ROUNDS, iterations=1
    )
    per_frame_ms = benchmark.stats.stats.median / len(frames) * 1e3
    ratios.add(TABLE, camera, column, per_frame_ms, baseline=MSGPACK)
    benchmark.extra_info.update(per_frame_ms=round(per_frame_ms, 3), camera=camera)
    print(
        f"\n{camera}, {column}: {per_frame_ms:.2f} ms per frame "
        f"({100 * per_frame_ms / BUDGET_MS:.1f} % of the {BUDGET_MS:.0f} ms real-time budget)"
    )
    assert per_frame_ms < BUDGET_MS, "the recorder would fall behind a 20 Hz camera"
