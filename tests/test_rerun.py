"""Rerun views (`fusion.views.rerun`), checked with Rerun's own reader: an exported file, and
what a live view serves, read back as any Rerun tool reads it."""

from __future__ import annotations

import argparse
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rerun as rr

from fusion.errors import FusionError, RecordingError
from fusion.logs.reader import RecordingReader
from fusion.logs.writer import RecordingWriter
from fusion.runtime import node
from fusion.runtime.transport import Publisher
from fusion.views import cli as views_cli
from fusion.views import rerun as rerun_view
from fusion.wire import codec
from fusion.wire.messages import DETECTION_DTYPE, Detections, GroundTruth

REPO = Path(__file__).resolve().parents[1]
CITY = REPO / "recordings" / "city.mcap"
#: Rows of the test recording with detections: the first seconds of the city drive.
DETECTIONS_DRIVE_S = 2.0
#: Offset that moves the simulated drive onto a monotonic-looking clock (ns).
MONOTONIC_OFFSET_NS = 10**12
#: Stage stamps of the hand-made detections, ms after capture.
TRACE_MS = {
    "input_published": 1,
    "received": 2,
    "synced": 3,
    "preprocessed": 5,
    "inferred": 20,
    "decoded": 22,
    "published": 23,
}
LOG_AFTER_CAPTURE_MS = 25
#: Entity -> (archetype, topic whose message count is its row count).
PER_MESSAGE = {
    "/camera/image": ("EncodedImage", "camera"),
    "/camera/image/radar": ("Points2D", "radar"),
    "/camera/image/ground_truth": ("Boxes2D", "ground_truth"),
    "/world/ego": ("Transform3D", "ego_motion"),
    "/world/ego/radar": ("Points3D", "radar"),
    "/world/ego/ground_truth": ("Boxes3D", "ground_truth"),
    "/counters/radar_points": ("Scalars", "radar"),
    "/counters/objects/true": ("Scalars", "ground_truth"),
}
WITH_DETECTIONS = {
    "/camera/image/detections": ("Boxes2D", "detections"),
    "/world/ego/detections": ("Boxes3D", "detections"),
    "/health/score": ("Scalars", "detections"),
    "/counters/objects/detected": ("Scalars", "detections"),
    "/counters/budget_misses": ("Scalars", "detections"),
    **{
        f"/{rerun_view.stage_entity(name)}": ("Scalars", "detections")
        for name, *_ in rerun_view.STAGES
    },
}


class RrdContents:
    """What Rerun's reader finds in an ``.rrd``: rows, archetypes and timelines per entity."""

    def __init__(self, path: Path) -> None:
        reader = rr.chunk.RrdReader(path)
        self.blueprints = reader.blueprints()
        store = reader.stream().collect()
        schema = store.schema()
        self.archetypes = {
            entity: {c.archetype.rpartition(".")[2] for c in schema.columns_for(entity_path=entity)}
            for entity in schema.entity_paths()
        }
        self.rows: Counter[str] = Counter()
        self.timelines: dict[str, set[str]] = {}
        self.columns: dict[str, dict[str, list[np.ndarray]]] = {}
        for chunk in store.stream():
            if chunk.is_static:
                continue
            entity = chunk.entity_path
            self.rows[entity] += chunk.num_rows
            self.timelines.setdefault(entity, set()).update(chunk.timeline_names)
            batch = chunk.to_record_batch()
            for name in batch.schema.names:
                column = batch.column(name)
                if name in ("capture_time", "frame") or name.startswith("Scalars"):
                    values = column.flatten() if name.startswith("Scalars") else column
                    array = values.cast("int64") if name == "capture_time" else values
                    self.columns.setdefault(entity, {}).setdefault(name, []).append(
                        array.to_numpy(zero_copy_only=False)
                    )

    def values(self, entity: str, column: str) -> np.ndarray:
        return np.sort(np.concatenate(self.columns[entity][column]))


def topic_counts(path: Path) -> Counter[str]:
    with RecordingReader(path) as reader:
        return Counter(record.topic for record in reader.messages())


def camera_calibrations(path: Path) -> int:
    with RecordingReader(path) as reader:
        calibrations = (record.decode() for record in reader.messages(topics=["calibration"]))
        return sum(1 for calib in calibrations if np.any(calib.intrinsics))


def check_entities(got: RrdContents, expected: dict[str, tuple[str, str]], counts: Counter):
    for entity, (archetype, topic) in expected.items():
        assert archetype in got.archetypes.get(entity, ()), (entity, got.archetypes.get(entity))
        assert got.rows[entity] == counts[topic], (entity, got.rows[entity], topic, counts[topic])
        assert got.timelines[entity] == {"capture_time", "frame"}, (entity, got.timelines[entity])


@pytest.mark.slow  # 2 s on an idle 2-core machine, 11 s with both cores busy
def test_export_shipped_recording(tmp_path: Path) -> None:
    out = tmp_path / "city.rrd"
    logger = rerun_view.export_recording(CITY, out)
    counts = topic_counts(CITY)
    assert not logger.skipped
    got = RrdContents(out)
    assert got.blueprints, "the default layout (blueprint) is in the file"
    check_entities(got, PER_MESSAGE, counts)
    assert got.rows["/world/ego/camera"] == camera_calibrations(CITY)
    assert {"Transform3D", "Pinhole"} <= got.archetypes["/world/ego/camera"]
    assert "LineStrips3D" in got.archetypes["/world/ego_path"] and got.rows["/world/ego_path"]
    assert "AnnotationContext" in got.archetypes["/"]
    # No detections in the drive: nothing is made up for them.
    assert not any(e.startswith(("/world/ego/detections", "/health")) for e in got.rows)
    with RecordingReader(CITY) as reader:
        camera = [r.decode() for r in reader.messages(topics=["camera"])]
    capture = got.values("/camera/image", "capture_time")
    assert capture.tolist() == sorted(m.capture_ns for m in camera)
    assert got.values("/camera/image", "frame").tolist() == sorted(m.seq for m in camera)


def detections_recording(path: Path) -> Counter[str]:
    """The first `DETECTIONS_DRIVE_S` of the city drive on a monotonic clock, as a recorder of a
    live graph would write it: a `Detections` per camera frame (a box ahead, a stamped trace),
    plus a ground truth that validation refuses and a message that does not decode. Returns
    the counts of the usable messages by topic."""
    counts: Counter[str] = Counter()
    with RecordingReader(CITY) as reader, RecordingWriter(path) as writer:
        for record in reader.messages(end_ns=int(DETECTIONS_DRIVE_S * 1e9)):
            msg = record.decode()
            msg.capture_ns += MONOTONIC_OFFSET_NS
            msg.clock = "monotonic"
            writer.write(record.topic, msg, log_time_ns=msg.capture_ns)
            counts[record.topic] += 1
            if record.topic != "camera":
                continue
            objects = np.zeros(2, DETECTION_DTYPE)
            objects[["x", "l", "w", "h", "score"]] = [(15, 4.5, 1.8, 1.5, 0.9), (30, 4, 2, 2, 0.5)]
            c = msg.capture_ns
            det = Detections(
                objects=objects,
                seq=msg.seq,
                capture_ns=c,
                sensor_id="fusion",
                trace={hop: c + ms * 1_000_000 for hop, ms in TRACE_MS.items()},
                health={"score": 0.25, "ok": 1.0},
                source_seqs={"camera": msg.seq},
            )
            writer.write("detections", det, log_time_ns=c + LOG_AFTER_CAPTURE_MS * 1_000_000)
            counts["detections"] += 1
        last = msg.capture_ns
        bad = np.zeros(1, GroundTruth.ARRAY_FIELDS["boxes"][0])
        bad["x"] = np.nan
        bad_gt = GroundTruth(boxes=bad, capture_ns=last, clock="monotonic")
        writer.write("ground_truth", bad_gt, log_time_ns=last)
        frames = codec.encode("detections", det)
        writer.write_frames("detections", [frames[0], b"\x93not msgpack", *frames[2:]], last, last)
    return counts


def test_export_with_detections_and_bad_messages(tmp_path: Path) -> None:
    recording, out = tmp_path / "drive.mcap", tmp_path / "drive.rrd"
    counts = detections_recording(recording)
    logger = rerun_view.export_recording(recording, out)
    assert logger.skipped == {"bad_ground_truth": 1, "decode_header": 1}, logger.skipped
    got = RrdContents(out)
    check_entities(got, {**PER_MESSAGE, **WITH_DETECTIONS}, counts)
    n = counts["detections"]
    assert got.values("/latency/model", "Scalars:scalars").tolist() == [15.0] * n
    assert got.values("/latency/transport_out", "Scalars:scalars").tolist() == [2.0] * n
    assert got.values("/health/score", "Scalars:scalars").tolist() == [0.25] * n
    assert got.rows["/counters/skipped/bad_ground_truth"] == 1
    assert got.rows["/counters/skipped/decode_header"] == 1
    frames = got.values("/world/ego/detections", "frame")
    assert frames.tolist() == got.values("/camera/image", "frame").tolist()


def test_image_boxes_are_the_projected_corners() -> None:
    from fusion.perception.geometry import CameraModel
    from tests.nodeproc import calibration

    camera = CameraModel.from_calibration(calibration())
    boxes = np.zeros(3, DETECTION_DTYPE)
    boxes[["x", "y", "l", "w", "h"]] = [(10, 0, 2, 2, 2), (-10, 0, 2, 2, 2), (10, 50, 2, 2, 2)]
    mins, sizes, shown = rerun_view.image_boxes(camera, boxes)
    assert shown.tolist() == [True, False, False]  # behind the camera; far out of the image
    # The box's near face is 9 m ahead: 2 m wide -> 200 px * 2 / 9 about the image centre.
    np.testing.assert_allclose(sizes[0], [400 / 9, 400 / 9], rtol=1e-6)
    np.testing.assert_allclose(mins[0] + sizes[0] / 2, [160, 90], atol=1e-6)


def test_missing_and_corrupt_files_are_fusion_errors(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="cannot open"):
        rerun_view.export_recording(tmp_path / "nope.mcap", tmp_path / "a.rrd")
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"this is not a recording" * 100)
    with pytest.raises(FusionError):
        rerun_view.export_recording(garbage, tmp_path / "b.rrd")


def test_cli_exit_status_for_a_missing_file(tmp_path: Path, capsys) -> None:
    pytest.importorskip("fusion.views.foxglove", reason="fusion export needs both viewers")
    from fusion.cli import main

    assert main(["export", "rerun", str(tmp_path / "nope.mcap"), "-o", "x.rrd"]) == 2
    assert "cannot open recording" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# `rerun --save` streams what it pulls from the server into a file without the footer that an
# export has; the reader says so and scans the whole file, which is what this test reads.
@pytest.mark.filterwarnings("ignore:RRD file has no footer")
def test_live_view_serves_what_the_graph_publishes(tmp_path: Path) -> None:
    """`view` serves the graph's messages over gRPC; Rerun's own client (``rerun --save``)
    pulls them from the server into a file, which the reader checks."""
    from tests.nodeproc import calibration, camera_frame, radar_scan

    port = free_port()
    parser = argparse.ArgumentParser()
    views_cli.add_view_arguments(parser)  # the command's own options and defaults
    args = parser.parse_args(
        ["--rerun", "--port", str(port), "--duration-s", "120", "--stats-period-s", "0"]
    )
    publishers = {t: Publisher(t) for t in ("calibration", "camera", "radar")}
    stop = node.ShutdownFlag(install=False)
    viewer = threading.Thread(target=rerun_view.view, args=(args, stop), daemon=True)
    viewer.start()
    saved = tmp_path / "live.rrd"
    client = None
    try:
        for pub in publishers.values():
            assert pub.wait_for_subscribers(1, timeout_s=60), f"{pub.topic}: no live view"
        client = subprocess.Popen(
            [
                *(rerun_view.rerun_program(), "--bind", "127.0.0.1", "--port", f"{free_port()}"),
                *("--save", str(saved), rerun_view.grpc_url("127.0.0.1", port)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        publishers["calibration"].send(calibration())
        deadline = time.monotonic() + 60
        got = None
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            publishers["camera"].send(camera_frame(seq))
            publishers["radar"].send(radar_scan(seq))
            time.sleep(0.2)  # pace like a sensor; the wait is on the condition below
            if saved.exists() and saved.stat().st_size:
                try:
                    got = RrdContents(saved)
                except Exception:  # the file is being written: read it again
                    continue
                if all(got.rows[e] >= 3 for e in ("/camera/image", "/camera/image/radar")):
                    break
        assert got is not None, "nothing came from the live view's server"
        assert "Image" in got.archetypes["/camera/image"]
        assert "Points2D" in got.archetypes["/camera/image/radar"]
        assert got.rows["/world/ego/camera"] == 1
        assert got.rows["/camera/image/radar"] >= 3, dict(got.rows)
        assert {"capture_time", "frame"} <= got.timelines["/camera/image"]
    finally:
        if client is not None:
            client.terminate()
            client.wait(10)
        stop.set()
        viewer.join(30)
        assert not viewer.is_alive(), "the live view did not stop"
        for pub in publishers.values():
            pub.close()


def test_the_web_viewer_stops_when_terminated() -> None:
    """`rerun --serve-web` is the native binary itself: the `rerun` script would run it as a
    child that outlives the script's termination (it kept serving, and spinning, after the
    tests)."""
    port = free_port()
    proc = rerun_view.start_web_viewer("127.0.0.1", port, rerun_view.grpc_url("127.0.0.1", 1))
    proc.terminate()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while rerun_view.listening("127.0.0.1", port):
        assert time.monotonic() < deadline, "the web viewer still serves after it was terminated"
        time.sleep(0.1)
