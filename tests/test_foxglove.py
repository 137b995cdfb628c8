"""Foxglove views, checked as a person would: an exported file opened with the `mcap` package's
reader and each message decoded with the protobuf schema it carries (what Foxglove does); our
own readers on a file that holds Foxglove channels beside the msgpack ones; ``fusion record
--foxglove`` end to end; and ``fusion view --foxglove`` through a WebSocket client."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from mcap.reader import make_reader

from fusion.cli import main as fusion_main
from fusion.core.latency import STAGES, stage_latencies_ms
from fusion.errors import CorruptRecordingError, RecordingError
from fusion.logs import foxglove as fx
from fusion.logs.player import Player, recorded_topics
from fusion.logs.reader import RecordingReader
from fusion.logs.recover import recover
from fusion.logs.writer import RecordingWriter
from fusion.perception.geometry import quaternion_to_rotation, rotation_to_quaternion
from fusion.runtime.testing import FakePublisher
from fusion.runtime.transport import Publisher
from fusion.views.cli import DISPLAY_MIN_SCORE
from fusion.wire import codec
from fusion.wire.messages import DETECTION_DTYPE, CameraFrame, Detections, Message
from tests import nodeproc
from tests.test_player_recorder import publish_at_nominal_rates, start_recorder

REPO = Path(__file__).resolve().parents[1]
CITY = REPO / "recordings" / "city.mcap"
MS = 1_000_000
#: The source drive: the first second of the city drive, plus what it lacks.
SOURCE_S = 1.0
OBJECTS_PER_FRAME = 3
#: A detection's trace: hop -> ms after capture (so each stage's latency is known exactly).
TRACE_MS = {
    "input_published": 1,
    "received": 2,
    "synced": 3,
    "preprocessed": 5,
    "inferred": 15,
    "decoded": 16,
    "published": 17,
}
LOG_AFTER_CAPTURE_MS = 20


def detections(seq: int, capture_ns: int) -> Detections:
    objects = np.zeros(OBJECTS_PER_FRAME, DETECTION_DTYPE)
    objects["class_id"] = [0, 2, 9]  # 9: no such class, drawn grey as "class 9"
    objects["score"] = [0.9, 0.5, 0.25]
    objects["x"], objects["l"], objects["w"], objects["h"] = [10, 20, 30], 4.0, 2.0, 1.5
    objects["yaw"] = [0.0, 0.5, -1.0]
    return Detections(
        objects=objects,
        seq=seq,
        capture_ns=capture_ns,
        trace={hop: capture_ns + ms * MS for hop, ms in TRACE_MS.items()},
        source_seqs={"camera": seq},
        health={"score": 0.1 * seq, "recon": 1.0, "kl": float("nan")},
        valid=seq % 5 != 4,
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """A recording of every topic: the city drive's first second (JPEG camera, radar, ego
    motion, ground truth, calibration), Detections for each frame, one raw bgr8 frame and one
    radar record that does not decode. Returns the path and its (topic, message or None, log
    time) in log-time order."""
    path = tmp_path_factory.mktemp("src") / "source.mcap"
    records: list[tuple[str, Message | None, int, list]] = []
    with RecordingReader(CITY) as reader:
        end_ns = reader.start_ns + int(SOURCE_S * 1e9)
        for rec in reader.messages(end_ns=end_ns):
            msg = rec.decode()
            records.append((rec.topic, msg, rec.log_time_ns, list(rec.frames)))
            if rec.topic == "camera":
                det = detections(msg.seq, msg.capture_ns)
                det_log_ns = rec.log_time_ns + LOG_AFTER_CAPTURE_MS * MS
                records.append(("detections", det, det_log_ns, codec.encode("detections", det)))
    raw = CameraFrame(image=np.full((24, 32, 3), 7, np.uint8), seq=999, capture_ns=5 * MS)
    records.append(("camera", raw, 5 * MS, codec.encode("camera", raw)))
    scan = next(m for t, m, *_ in records if t == "radar")
    bad = list(codec.encode("radar", scan))
    bad[2] = bytes(bad[2])[:-3]  # a points buffer cut short: does not decode
    records.append(("radar", None, 7 * MS, bad))
    records.sort(key=lambda r: r[2])
    with RecordingWriter(path, chunk_size=256 * 1024) as writer:
        for topic, msg, log_ns, frames in records:
            capture_ns = msg.capture_ns if msg is not None else 0
            seq = msg.seq if msg is not None else 0
            writer.write_frames(topic, frames, log_ns, capture_ns, sequence=seq)
    return path, [(t, m, log_ns) for t, m, log_ns, _ in records]


class ProtobufDecoder:
    """Decodes a Foxglove channel's messages from the schema in the file, as Foxglove does."""

    def __init__(self) -> None:
        self._classes: dict[tuple[str, bytes], type] = {}

    def decode(self, schema_name: str, schema_data: bytes, data: bytes):
        key = (schema_name, schema_data)
        if key not in self._classes:
            pool = descriptor_pool.DescriptorPool()
            for file in descriptor_pb2.FileDescriptorSet.FromString(schema_data).file:
                pool.Add(file)
            self._classes[key] = message_factory.GetMessageClass(
                pool.FindMessageTypeByName(schema_name)
            )
        return self._classes[key].FromString(data)


def read_foxglove(path: Path) -> dict[str, list[tuple[object, int, int, object]]]:
    """Topic -> [(decoded message, log time, publish time, schema)] with the `mcap` reader."""
    decoder = ProtobufDecoder()
    out: dict[str, list] = {}
    with open(path, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages(log_time_order=True):
            if channel.message_encoding == "protobuf":
                assert schema.encoding == "protobuf"
                decoded = decoder.decode(schema.name, schema.data, message.data)
            elif channel.message_encoding == "json":
                assert schema.encoding == "jsonschema"
                decoded = json.loads(message.data)
            else:
                continue  # our own msgpack channels (--with-msgpack)
            out.setdefault(channel.topic, []).append(
                (decoded, message.log_time, message.publish_time, schema)
            )
    return out


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "foxglove.mcap"
    every = ["--min-score", "0"]  # every detection's cube, whatever its score
    assert fusion_main(["export", "foxglove", str(source[0]), "-o", str(out), *every]) == 0
    return out


def _stamp_ns(stamp) -> int:
    return stamp.seconds * 1_000_000_000 + stamp.nanos


def test_export_writes_every_topic_in_foxglove_schemas(source, exported, capsys) -> None:
    _, records = source
    got = read_foxglove(exported)
    expected_schema = {topic: schema.name for topic, schema in fx.CHANNELS.items()}
    assert set(got) == set(fx.CHANNELS)
    for topic, messages in got.items():
        assert messages[0][3].name == expected_schema[topic], topic

    def of(topic: str, kind=object) -> list:
        return [(m, log_ns) for t, m, log_ns in records if t == topic and isinstance(m, kind)]

    jpegs = [(m, t) for m, t in of("camera") if m.encoding == "jpeg"]
    assert len(got[fx.IMAGE_TOPIC]) == len(jpegs)
    for (image, log_ns, publish_ns, _), (frame, frame_log_ns) in zip(
        got[fx.IMAGE_TOPIC], jpegs, strict=True
    ):
        assert image.data == frame.image.tobytes() and image.format == "jpeg"  # bytes as they are
        assert image.frame_id == "camera_front"
        assert (log_ns, publish_ns) == (frame_log_ns, frame.capture_ns)
        assert _stamp_ns(image.timestamp) == frame.capture_ns
    ((raw, *_),) = got[fx.RAW_IMAGE_TOPIC]
    assert (raw.width, raw.height, raw.encoding, raw.step) == (32, 24, "bgr8", 96)
    assert raw.data == bytes([7]) * 32 * 24 * 3

    scans = [m for m, _ in of("radar") if m is not None]  # the undecodable one is skipped
    assert len(got[fx.RADAR_TOPIC]) == len(scans)
    for (cloud, *_), scan in zip(got[fx.RADAR_TOPIC], scans, strict=True):
        assert [(f.name, f.offset) for f in cloud.fields] == [
            (name, scan.points.dtype.fields[name][1]) for name in scan.points.dtype.names
        ]
        assert {"v_r", "rcs"} <= {f.name for f in cloud.fields}
        assert cloud.point_stride == scan.points.dtype.itemsize
        assert cloud.data == scan.points.tobytes() and cloud.frame_id == "radar"

    dets = of("detections")
    assert len(got[fx.DETECTIONS_TOPIC]) == len(dets) == len(got[fx.HEALTH_TOPIC])
    for (scene, log_ns, *_), (det, det_log_ns) in zip(got[fx.DETECTIONS_TOPIC], dets, strict=True):
        assert log_ns == det_log_ns
        assert [d.type for d in scene.deletions] == [1]  # ALL: the previous frame's boxes go
        assert len(scene.entities) == len(det.objects)
        assert sum(len(e.cubes) for e in scene.entities) == len(det.objects)
        labels = [e.texts[0].text for e in scene.entities]
        assert labels == ["car 0.90", "pedestrian 0.50", "class 9 0.25"]
        cube = scene.entities[1].cubes[0]
        assert (cube.size.x, cube.size.y, cube.size.z) == (4.0, 2.0, 1.5)
        assert cube.pose.position.x == 20.0
        assert cube.pose.orientation.z == pytest.approx(np.sin(0.25))
        assert {e.frame_id for e in scene.entities} == {fx.EGO_FRAME}
    latency = [m for m, *_ in got[fx.LATENCY_TOPIC]]
    assert len(latency) == len(dets)
    want = stage_latencies_ms(dets[0][0].trace, dets[0][0].capture_ns, dets[0][1])
    assert latency[0] == {
        "camera_seq": dets[0][0].seq,
        "mode": "fused",
        **{fx.stage_key(k): v for k, v in want.items()},
    }
    assert latency[0]["model_ms"] == 10.0 and len(want) == len(STAGES)
    health = [m for m, *_ in got[fx.HEALTH_TOPIC]]
    assert health[0]["kl"] is None  # NaN is not JSON
    assert health[-1]["outputs"] == len(dets)
    assert health[-1]["invalid"] == sum(not d.valid for d, _ in dets)

    truths = of("ground_truth")
    assert len(got[fx.GROUND_TRUTH_TOPIC]) == len(truths)
    for (scene, *_), (gt, _) in zip(got[fx.GROUND_TRUTH_TOPIC], truths, strict=True):
        assert len(scene.entities) == len(gt.boxes)

    calibs = [m for m, _ in of("calibration")]
    cameras = [c for c in calibs if c.width_px]
    assert len(got[fx.CAMERA_CALIBRATION_TOPIC]) == len(cameras)
    info = got[fx.CAMERA_CALIBRATION_TOPIC][0][0]
    assert list(info.K) == pytest.approx(cameras[0].intrinsics.ravel())
    assert (info.width, info.height, info.frame_id) == (960, 540, "camera_front")
    transforms = [m for m, *_ in got[fx.TF_TOPIC]]
    assert len(transforms) == len(calibs) + len(of("ego_motion"))
    by_child = {}
    for tf in transforms:
        by_child.setdefault((tf.parent_frame_id, tf.child_frame_id), tf)
    assert set(by_child) == {("ego", "camera_front"), ("ego", "radar"), ("world", "ego")}
    cam_tf = by_child[("ego", "camera_front")]
    q = cam_tf.rotation
    np.testing.assert_allclose(
        quaternion_to_rotation(q.w, q.x, q.y, q.z), cameras[0].sensor_to_ref[:3, :3], atol=1e-9
    )
    t = cam_tf.translation
    np.testing.assert_allclose([t.x, t.y, t.z], cameras[0].sensor_to_ref[:3, 3])
    ego = next(m for m, _ in of("ego_motion"))
    assert by_child[("world", "ego")].translation.y == pytest.approx(ego.y_m)


def test_export_reports_what_it_skipped_and_keeps_metadata(source, tmp_path, capsys) -> None:
    out = tmp_path / "f.mcap"
    assert fusion_main(["export", "foxglove", str(source[0]), "-o", str(out)]) == 0
    line = capsys.readouterr().out
    assert "skipped 1 that did not decode" in line
    with RecordingReader(out) as reader:
        assert reader.topics == {}  # only views: nothing for `fusion play`
        assert set(reader.view_topics) == set(fx.CHANNELS)
        assert reader.metadata["fusion.recording"]["exported_from"] == str(source[0])


def test_our_readers_on_a_file_with_foxglove_channels_beside_ours(source, tmp_path) -> None:
    src, _ = source
    both = tmp_path / "both.mcap"
    assert fusion_main(["export", "foxglove", str(src), "-o", str(both), "--with-msgpack"]) == 0
    with RecordingReader(src) as reader:
        want = [(r.topic, [bytes(f) for f in r.frames]) for r in reader.messages()]
        want_topics = reader.topics
    with RecordingReader(both) as reader:
        assert reader.topics == want_topics
        assert reader.view_topics[fx.IMAGE_TOPIC] == "foxglove.CompressedImage"
        assert [(r.topic, [bytes(f) for f in r.frames]) for r in reader.messages()] == want
        with pytest.raises(RecordingError, match="view channels"):
            next(reader.messages([fx.IMAGE_TOPIC]))
        with_views = list(reader.messages(views=True))
        assert len(with_views) > len(want)
        player = Player(reader, {t: FakePublisher(t) for t in want_topics}, max_speed=True)
        played = [topic for topic, _ in player.replay()]
    # Every msgpack message but the one that does not decode (skipped by the player), no view.
    assert sorted([*played, "radar"]) == sorted(t for t, _ in want)
    assert set(recorded_topics(str(both), [*want_topics, fx.IMAGE_TOPIC])) == set(want_topics)
    assert fusion_main(["info", str(both)]) == 0
    counts = recover(both, tmp_path / "recovered.mcap")
    assert counts[fx.IMAGE_TOPIC] == sum(m.topic == fx.IMAGE_TOPIC for m in with_views)
    with RecordingReader(tmp_path / "recovered.mcap") as reader:
        assert len(list(reader.messages(views=True))) == len(with_views)
        assert set(reader.view_topics) == set(fx.CHANNELS)
    # Cut short (a recorder killed with SIGKILL): walked chunk by chunk, views kept apart.
    data = both.read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) * 3 // 4])
    with RecordingReader(tmp_path / "cut.mcap") as reader:
        assert not reader.indexed and reader.damage is not None
        assert set(reader.topics) <= set(want_topics) and reader.view_topics
        ours = []
        with pytest.raises(CorruptRecordingError):
            ours.extend(reader.messages())  # every intact chunk's messages, then the damage
    counts = recover(tmp_path / "cut.mcap", tmp_path / "fixed.mcap")
    assert sum(n for t, n in counts.items() if t in want_topics) == len(ours)
    assert sum(n for t, n in counts.items() if t in fx.CHANNELS) > 0


def test_info_lists_the_foxglove_channels(exported, capsys) -> None:
    assert fusion_main(["info", str(exported)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"/camera/image\s+foxglove\.CompressedImage\s+20 ", text), text


def test_bad_input_is_one_clear_error(source, tmp_path, capsys) -> None:
    out = str(tmp_path / "o.mcap")
    assert fusion_main(["export", "foxglove", str(tmp_path / "missing.mcap"), "-o", out]) == 2
    assert "cannot open recording" in capsys.readouterr().err
    (tmp_path / "text.mcap").write_text("not a recording")
    assert fusion_main(["export", "foxglove", str(tmp_path / "text.mcap"), "-o", out]) == 2
    assert "not an MCAP recording" in capsys.readouterr().err
    assert fusion_main(["export", "foxglove", str(source[0]), "-o", str(source[0])]) == 2
    assert "new output file" in capsys.readouterr().err
    # A truncated recording: every intact chunk is exported, then the damage is reported.
    data = source[0].read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) * 2 // 3])
    assert fusion_main(["export", "foxglove", str(tmp_path / "cut.mcap"), "-o", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0], err
    assert len(read_foxglove(Path(out))[fx.IMAGE_TOPIC]) > 0


def test_a_message_foxglove_cannot_hold_is_counted_not_raised() -> None:
    converter = fx.FoxgloveConverter()
    assert converter.convert("detections", detections(0, -5), 0) == []
    assert converter.skipped == {"detections: OverflowError": 1}
    assert len(converter.convert("detections", detections(1, 5), 0)) == 3


def test_layout_names_only_channels_and_fields_the_views_make() -> None:
    layout = json.loads((REPO / "docs" / "foxglove" / "layout.json").read_text())
    panels = layout["configById"]
    assert {p.split("!")[0] for p in panels} == {"Image", "3D", "Plot"}
    image = panels["Image!camera"]["imageMode"]
    assert (image["imageTopic"], image["calibrationTopic"]) == (
        fx.IMAGE_TOPIC,
        fx.CAMERA_CALIBRATION_TOPIC,
    )
    for panel in panels.values():
        assert set(panel.get("topics", {})) <= set(fx.CHANNELS)
        for path in panel.get("paths", []):
            topic, _, field = path["value"].partition(".")
            properties = json.loads(fx.CHANNELS[topic].data)["properties"]
            assert field in properties, path
    assert panels["3D!scene"]["followTf"] == fx.EGO_FRAME


def test_rotation_to_quaternion_inverts_quaternion_to_rotation() -> None:
    rng = np.random.default_rng(0)
    for q in [*rng.normal(size=(50, 4)), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]:
        rotation = quaternion_to_rotation(*q)
        w, x, y, z = rotation_to_quaternion(rotation)
        np.testing.assert_allclose(quaternion_to_rotation(w, x, y, z), rotation, atol=1e-12)
        assert w >= 0


@pytest.mark.slow
def test_recorder_writes_foxglove_channels_beside_the_msgpack_ones(tmp_path) -> None:
    out = tmp_path / "rec.mcap"
    proc = start_recorder(out, "--foxglove")
    try:
        sent = publish_at_nominal_rates(1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    with RecordingReader(out) as reader:
        assert reader.indexed and reader.damage is None
        assert set(reader.topics) == {"camera", "radar"}
        got = list(reader.messages())
    for topic in ("camera", "radar"):  # the msgpack recording is complete, as without views
        assert [r.sequence for r in got if r.topic == topic] == [
            m.seq for t, m in sent if t == topic
        ]
    views = read_foxglove(out)
    assert set(views) == {fx.RAW_IMAGE_TOPIC, fx.RADAR_TOPIC}  # the test camera sends bgr8
    assert len(views[fx.RAW_IMAGE_TOPIC]) == sum(t == "camera" for t, _ in sent)
    assert len(views[fx.RADAR_TOPIC]) == sum(t == "radar" for t, _ in sent)
    by_seq = {r.sequence: r.log_time_ns for r in got if r.topic == "radar"}
    cloud, log_ns, publish_ns, _ = views[fx.RADAR_TOPIC][0]
    first = next(m for t, m in sent if t == "radar")
    assert (log_ns, publish_ns) == (by_seq[first.seq], first.capture_ns)
    assert cloud.data == first.points.tobytes()


class WebSocketClient:
    """Just enough of a WebSocket client (RFC 6455) for the Foxglove protocol: text frames out
    (masked), text and binary frames in."""

    SUBPROTOCOL = "foxglove.sdk.v1"

    def __init__(self, port: int, timeout_s: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {self.SUBPROTOCOL}\r\n\r\n".encode()
        )
        self._buf = b""
        while b"\r\n\r\n" not in self._buf:
            self._buf += self._recv()
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def _take(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += self._recv()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def receive(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame: 1 text, 2 binary."""
        b0, b1 = self._take(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", self._take(8))
        return b0 & 0x0F, self._take(n)

    def send_json(self, doc: dict) -> None:
        data, mask = json.dumps(doc).encode(), os.urandom(4)
        n = len(data)
        length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
        self.sock.sendall(
            bytes([0x81]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        )

    def close(self) -> None:
        self.sock.close()


def _publish_until(stop: threading.Event) -> None:
    """The topics of a running graph at ~10 Hz until `stop`."""
    pubs = {t: Publisher(t) for t in ("calibration", "camera", "radar", "detections")}
    try:
        seq = 0
        while not stop.is_set():
            now = time.monotonic_ns()
            pubs["calibration"].send(nodeproc.calibration())
            pubs["camera"].send(nodeproc.camera_frame(seq, now))
            pubs["radar"].send(nodeproc.radar_scan(seq, now))
            pubs["detections"].send(detections(seq, now))
            seq += 1
            stop.wait(0.1)
    finally:
        for pub in pubs.values():
            pub.close()


@pytest.mark.slow
def test_live_view_serves_the_graph_over_websocket(tmp_path) -> None:
    log_path = tmp_path / "view.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "fusion.cli", "view", "--foxglove", "--port", "0"),
                *("--duration-s", "300", "--stats-period-s", "1"),
            ],
            cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    stop = threading.Event()
    publisher = threading.Thread(target=_publish_until, args=(stop,))
    client = None
    try:
        deadline = time.monotonic() + nodeproc.START_TIMEOUT_S
        while not (found := re.search(r"ws://127\.0\.0\.1:(\d+)", log_path.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        client = WebSocketClient(int(found.group(1)), timeout_s=30)
        publisher.start()
        channels: dict[int, dict] = {}
        subscriptions: dict[int, dict] = {}
        messages: dict[str, bytes] = {}
        statuses: list[dict] = []
        wanted = {fx.RAW_IMAGE_TOPIC, fx.RADAR_TOPIC, fx.DETECTIONS_TOPIC, fx.TF_TOPIC}
        while not wanted <= set(messages):
            assert time.monotonic() < deadline + 60, (
                f"advertised {sorted(c['topic'] for c in channels.values())}, messages on "
                f"{sorted(messages)}; status messages {statuses}; the view's log:\n"
                + log_path.read_text()[-3000:]
            )
            opcode, payload = client.receive()
            if opcode == 1:
                doc = json.loads(payload)
                if doc["op"] == "status":  # the server refused something: say what
                    statuses.append(doc)
                if doc["op"] == "advertise":
                    new = [c for c in doc["channels"] if c["id"] not in channels]
                    channels.update({c["id"]: c for c in new})
                    subs = [{"id": c["id"], "channelId": c["id"]} for c in new]
                    subscriptions.update({c["id"]: c for c in new})
                    client.send_json({"op": "subscribe", "subscriptions": subs})
            elif opcode == 2 and payload[0] == 1:  # message data: sub id, log time, payload
                (sub_id,) = struct.unpack_from("<I", payload, 1)
                messages.setdefault(subscriptions[sub_id]["topic"], payload[13:])
        image_channel = next(c for c in channels.values() if c["topic"] == fx.RAW_IMAGE_TOPIC)
        assert image_channel["schemaName"] == "foxglove.RawImage"
        image = ProtobufDecoder().decode(
            image_channel["schemaName"],
            base64.b64decode(image_channel["schema"]),
            messages[fx.RAW_IMAGE_TOPIC],
        )
        assert (image.width, image.height, image.encoding) == (nodeproc.W, nodeproc.H, "bgr8")
    finally:
        stop.set()
        if publisher.is_alive():
            publisher.join()
        if client is not None:
            client.close()
        log_text = nodeproc.stop(proc, log_path)
    assert proc.returncode == 0, log_text


def test_export_draws_detections_from_the_display_score_up(source, tmp_path) -> None:
    out = tmp_path / "default.mcap"
    assert fusion_main(["export", "foxglove", str(source[0]), "-o", str(out)]) == 0
    dets = [m for t, m, _ in source[1] if t == "detections"]
    scenes = [m for m, *_ in read_foxglove(out)[fx.DETECTIONS_TOPIC]]
    assert len(scenes) == len(dets)
    kept = [int((d.objects["score"] >= DISPLAY_MIN_SCORE).sum()) for d in dets]
    assert [len(s.entities) for s in scenes] == kept and kept != [len(d.objects) for d in dets]


def test_stages_off_the_trace_clock_use_only_trace_stamps() -> None:
    trace = {"received": 10_000_000, "synced": 12_000_000, "decoded": 30_000_000}
    on_monotonic = stage_latencies_ms(trace, 5_000_000, 40_000_000)
    assert on_monotonic == {"sync": 2.0, "capture -> detections": 25.0, "capture -> recorded": 35.0}
    assert stage_latencies_ms(trace, 5_000_000, 40_000_000, clock="sim") == {"sync": 2.0}
