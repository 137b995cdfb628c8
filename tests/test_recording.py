"""Recording files: bit-exact round trips, seeking, summaries, and damaged files (no sockets)."""

from __future__ import annotations

import contextlib
import json
import random
import struct

import numpy as np
import pytest
from mcap.reader import make_reader

from fusion.cli import main as fusion_main
from fusion.errors import CorruptRecordingError, FusionError, RecordingError
from fusion.logs.framing import MESSAGE_ENCODING, SCHEMA_ENCODING, frame_message, unframe_message
from fusion.logs.reader import RecordingReader
from fusion.logs.recover import recover
from fusion.logs.writer import RecordingWriter
from fusion.wire import codec
from fusion.wire.messages import (
    DETECTION_DTYPE,
    RADAR_POINT_DTYPE,
    Calibration,
    CameraFrame,
    Detections,
    EgoMotion,
    RadarScan,
)

MS = 1_000_000


def camera(rng: np.random.Generator, seq: int, t_ns: int) -> CameraFrame:
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    return CameraFrame(image=image, seq=seq, capture_ns=t_ns, sensor_id="front", clock="sim")


def radar(rng: np.random.Generator, seq: int, t_ns: int) -> RadarScan:
    points = np.zeros(int(rng.integers(0, 40)), RADAR_POINT_DTYPE)
    for name in RADAR_POINT_DTYPE.names:
        points[name] = rng.normal(size=len(points))
    return RadarScan(points=points, seq=seq, capture_ns=t_ns, sensor_id="r0", clock="sim")


def drive(seconds: float = 2.0, seed: int = 0) -> list[tuple[str, object, int]]:
    """(topic, message, log time) for a small drive: camera 20 Hz, radar 13 Hz, ego 20 Hz, one
    calibration and a few detections; log time = capture time + a little transport delay."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, object, int]] = []
    calib = Calibration(
        sensor_to_ref=np.eye(4), intrinsics=np.eye(3), distortion=np.zeros(5), sensor_id="front"
    )
    out.append(("calibration", calib, 0))
    for i in range(int(seconds * 20)):
        t = i * 50 * MS
        out.append(("camera", camera(rng, i, t), t + 3 * MS))
        out.append(("ego_motion", EgoMotion(seq=i, capture_ns=t, speed_mps=10.0 + i), t + 1 * MS))
        dets = Detections(objects=np.zeros(2, DETECTION_DTYPE), seq=i, source_seqs={"camera": i})
        out.append(("detections", dets, t + 20 * MS))
    for i in range(int(seconds * 13)):
        t = int(i * 1e9 / 13)
        out.append(("radar", radar(rng, i, t), t + 2 * MS))
    return out


def write_drive(path, messages, **kwargs) -> None:
    with RecordingWriter(path, **kwargs) as writer:
        for topic, msg, log_ns in messages:
            writer.write(topic, msg, log_time_ns=log_ns)


def wire_bytes(topic: str, msg) -> list[bytes]:
    return [bytes(f) for f in codec.encode(topic, msg)]


def test_round_trip_is_bit_exact_and_in_log_time_order(tmp_path) -> None:
    messages = drive()
    path = tmp_path / "d.mcap"
    write_drive(path, messages, chunk_size=8 * 1024)  # written in topic-blocks, not time order
    expected = sorted(messages, key=lambda m: m[2])
    with RecordingReader(path) as reader:
        assert reader.indexed and reader.damage is None
        got = list(reader.messages())
    assert len(got) == len(expected)
    for rec, (topic, msg, log_ns) in zip(got, expected, strict=True):
        assert (rec.topic, rec.log_time_ns, rec.publish_time_ns, rec.sequence) == (
            topic,
            log_ns,
            msg.capture_ns,
            msg.seq,
        )
        assert [bytes(f) for f in rec.frames] == wire_bytes(topic, msg)
        decoded = rec.decode()
        assert type(decoded) is type(msg) and decoded.seq == msg.seq
        for name in msg.ARRAY_FIELDS:
            np.testing.assert_array_equal(getattr(decoded, name), getattr(msg, name))
            assert getattr(decoded, name).flags.aligned


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_compressions_round_trip(tmp_path, compression: str) -> None:
    messages = drive(0.5)
    write_drive(tmp_path / "d.mcap", messages, compression=compression, chunk_size=4096)
    with RecordingReader(tmp_path / "d.mcap") as reader:
        assert len(list(reader.messages())) == len(messages)


def test_write_frames_stores_received_frames_as_they_are(tmp_path) -> None:
    msg = radar(np.random.default_rng(1), 7, 123)
    frames = codec.encode("radar", msg)
    with RecordingWriter(tmp_path / "f.mcap") as writer:
        writer.write_frames("radar", frames, log_time_ns=500, publish_time_ns=123, sequence=7)
        with pytest.raises(RecordingError, match="topic frame"):
            writer.write_frames("camera", frames, log_time_ns=501, publish_time_ns=1)
    with RecordingReader(tmp_path / "f.mcap") as reader:
        (rec,) = reader.messages()
    assert [bytes(f) for f in rec.frames] == [bytes(f) for f in frames]
    assert (rec.log_time_ns, rec.publish_time_ns, rec.sequence) == (500, 123, 7)


def test_framing_round_trip_and_rejects_garbage() -> None:
    frames = [b"header", b"", b"x" * 1000]
    data = frame_message(frames)
    assert data[:4] == (3).to_bytes(4, "little")
    assert [bytes(f) for f in unframe_message(memoryview(data))] == frames
    for bad in (data[:-1], data + b"!", data[:2], b"\xff\xff\xff\xff"):
        with pytest.raises(FusionError):
            unframe_message(memoryview(bad))


def test_standard_mcap_readers_understand_the_file(tmp_path) -> None:
    messages = drive(0.5)
    write_drive(tmp_path / "d.mcap", messages)
    with open(tmp_path / "d.mcap", "rb") as f:
        reader = make_reader(f, validate_crcs=True)
        summary = reader.get_summary()
        channels = {c.topic: c for c in summary.channels.values()}
        assert set(channels) == {t for t, _, _ in messages}
        assert channels["camera"].message_encoding == MESSAGE_ENCODING
        assert channels["camera"].metadata["rate_hz"] == "20.0"
        schema = summary.schemas[channels["radar"].schema_id]
        assert (schema.name, schema.encoding) == ("RadarScan", SCHEMA_ENCODING)
        assert json.loads(schema.data)["arrays"]["points"]["ndims"] == [1]
        assert summary.statistics.message_count == len(messages)
        assert sum(1 for _ in reader.iter_messages()) == len(messages)


def test_topic_filter_and_time_window_read_only_the_chunks_needed(tmp_path) -> None:
    messages = drive(4.0)
    write_drive(tmp_path / "d.mcap", sorted(messages, key=lambda m: m[2]), chunk_size=2048)
    start, end = 1000 * MS, 1500 * MS
    with open(tmp_path / "d.mcap", "rb") as f:
        total_chunks = len(make_reader(f).get_summary().chunk_indexes)
    with RecordingReader(tmp_path / "d.mcap") as reader:
        got = list(reader.messages(topics=["radar"], start_ns=start, end_ns=end))
        assert reader.chunks_read < total_chunks / 4
    expected = [m for m in messages if m[0] == "radar" and start <= m[2] < end]
    assert [r.sequence for r in got] == [m.seq for _, m, _ in sorted(expected, key=lambda m: m[2])]
    assert len(got) == 7


def test_summary_counts_rates_duration_and_gaps(tmp_path) -> None:
    messages = [m for m in drive(3.0) if not (m[0] == "camera" and 1000 * MS <= m[2] < 1500 * MS)]
    write_drive(tmp_path / "d.mcap", messages)
    with RecordingReader(tmp_path / "d.mcap") as reader:
        summary = reader.summary()
    assert summary.indexed and summary.damage is None
    assert summary.message_count == len(messages)
    assert summary.topics["camera"].count == 60 - 10
    assert summary.topics["radar"].rate_hz == pytest.approx(13.0, rel=0.01)
    assert summary.topics["radar"].nominal_rate_hz == 13.0
    assert summary.topics["radar"].gaps == ()
    (gap,) = summary.topics["camera"].gaps
    assert gap.duration_ns == 550 * MS and gap.start_ns == 953 * MS
    assert summary.duration_s == pytest.approx((2950 + 20 - 0) / 1000)
    assert summary.size_bytes == (tmp_path / "d.mcap").stat().st_size
    text = summary.format()
    assert "camera" in text and "CameraFrame" in text and "0.550 s" in text


def test_simultaneous_messages_of_several_sensors_are_not_gaps(tmp_path) -> None:
    calib = Calibration(sensor_to_ref=np.eye(4), intrinsics=np.eye(3), distortion=np.zeros(5))
    times = [t * 1000 * MS for t in range(5) for _ in ("camera", "radar")]
    write_drive(tmp_path / "c.mcap", [("calibration", calib, t) for t in times])
    with RecordingReader(tmp_path / "c.mcap") as reader:
        assert reader.summary().topics["calibration"].gaps == ()


def test_info_command(tmp_path, capsys) -> None:
    write_drive(tmp_path / "d.mcap", drive(1.0))
    assert fusion_main(["info", str(tmp_path / "d.mcap")]) == 0
    assert "RadarScan" in capsys.readouterr().out
    assert fusion_main(["info", "--json", "--verify", str(tmp_path / "d.mcap")]) == 0
    assert json.loads(capsys.readouterr().out)["topics"]["camera"]["count"] == 20


@pytest.fixture
def one_message_per_chunk(tmp_path):
    """A recording whose every message is its own chunk, with each chunk's [start, end) bytes."""
    messages = sorted(drive(1.0), key=lambda m: m[2])
    path = tmp_path / "d.mcap"
    write_drive(path, messages, chunk_size=1)
    with open(path, "rb") as f:
        chunks = make_reader(f).get_summary().chunk_indexes
    spans = sorted((c.chunk_start_offset, c.chunk_start_offset + c.chunk_length) for c in chunks)
    assert len(spans) == len(messages)
    return path, messages, spans


def read_until_damage(path) -> tuple[list, CorruptRecordingError | None]:
    got = []
    try:
        with RecordingReader(path) as reader:
            summary = reader.summary()
            assert summary.message_count >= 0
            for rec in reader.messages():
                got.append(rec)
    except CorruptRecordingError as exc:
        return got, exc
    return got, None


def test_truncated_file_yields_every_complete_chunk_then_names_the_damage(
    one_message_per_chunk, tmp_path
) -> None:
    path, messages, spans = one_message_per_chunk
    data = path.read_bytes()
    rng = random.Random(0)
    cuts = sorted(
        {8, 20, len(data) - 1, spans[-1][1], spans[-1][1] + 3, *rng.sample(range(8, len(data)), 40)}
    )
    for cut in cuts:
        cut_path = tmp_path / "cut.mcap"
        cut_path.write_bytes(data[:cut])
        got, error = read_until_damage(cut_path)
        complete = sum(1 for _, end in spans if end <= cut)
        assert len(got) == complete, f"cut at {cut}"
        assert (
            [bytes(f) for f in got[-1].frames] == wire_bytes(*messages[complete - 1][:2])
            if got
            else True
        )
        assert error is not None and str(cut_path) in str(error)
        assert error.path == str(cut_path) and 8 <= error.offset <= cut


def test_flipped_byte_in_a_chunk_loses_that_chunk_only(one_message_per_chunk) -> None:
    """The damaged chunk is skipped and reading goes on: every other message is read (this test
    used to assert that everything after the flipped byte was lost), then the damage is
    reported with its offset."""
    path, messages, spans = one_message_per_chunk
    data = bytearray(path.read_bytes())
    start, end = spans[30]
    data[(start + end) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    got, error = read_until_damage(path)
    assert [r.sequence for r in got] == [m.seq for _, m, _ in messages[:30] + messages[31:]]
    assert error is not None and error.offset == start and f"offset {start}" in str(error)
    assert fusion_main(["info", "--verify", str(path)]) == 2


def test_random_damage_never_raises_anything_but_fusion_errors(
    one_message_per_chunk, tmp_path
) -> None:
    path, _, _ = one_message_per_chunk
    data = path.read_bytes()
    rng = random.Random(1)
    for i in range(200):
        damaged = bytearray(data[: rng.randrange(len(data))] if i % 3 == 0 else data)
        for _ in range(rng.choice((1, 1, 3))):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        (tmp_path / "x.mcap").write_bytes(bytes(damaged))
        try:
            with RecordingReader(tmp_path / "x.mcap") as reader:
                reader.summary()
                for rec in reader.messages():
                    with contextlib.suppress(FusionError):
                        rec.decode()
        except FusionError:
            pass


def test_not_a_recording(tmp_path) -> None:
    for content in (b"", b"hello world, not mcap at all"):
        (tmp_path / "x.mcap").write_bytes(content)
        with pytest.raises(CorruptRecordingError, match="not an MCAP recording") as info:
            RecordingReader(tmp_path / "x.mcap")
        assert info.value.offset == 0
    with pytest.raises(RecordingError, match="cannot open"):
        RecordingReader(tmp_path / "missing.mcap")


def test_recover_keeps_every_complete_chunk(one_message_per_chunk, tmp_path) -> None:
    path, messages, spans = one_message_per_chunk
    cut = (spans[40][0] + spans[40][1]) // 2
    (tmp_path / "cut.mcap").write_bytes(path.read_bytes()[:cut])
    counts = recover(tmp_path / "cut.mcap", tmp_path / "fixed.mcap")
    assert sum(counts.values()) == 40
    with RecordingReader(tmp_path / "fixed.mcap") as reader:
        assert reader.indexed and reader.damage is None
        got = list(reader.messages())
        assert reader.metadata["fusion.recording"]["recovered_from"].endswith("cut.mcap")
    for rec, (topic, msg, log_ns) in zip(got, messages[:40], strict=True):
        assert rec.log_time_ns == log_ns and [bytes(f) for f in rec.frames] == wire_bytes(
            topic, msg
        )
    assert fusion_main(["recover", str(tmp_path / "cut.mcap"), str(tmp_path / "again.mcap")]) == 0
    with pytest.raises(RecordingError, match="new output file"):
        recover(tmp_path / "cut.mcap", tmp_path / "cut.mcap")


def unindexed(data: bytes) -> bytes:
    """The data section of a valid file without its summary and footer (a killed writer)."""
    from mcap.opcode import Opcode

    pos = 8
    while True:
        opcode, length = struct.unpack_from("<BQ", data, pos)
        if opcode == Opcode.DATA_END:
            return data[:pos]
        pos += 9 + length


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "unindexed"])
def test_recover_keeps_every_intact_chunk_wherever_the_damage_is(
    one_message_per_chunk, tmp_path, indexed: bool
) -> None:
    """Damage in three places (a flipped byte, a chunk length that points past the end, garbage
    over a record boundary): every other chunk is recovered, before and after each."""
    path, messages, spans = one_message_per_chunk
    data = bytearray(path.read_bytes() if indexed else unindexed(path.read_bytes()))
    damaged = [10, 40, 65]
    data[(spans[10][0] + spans[10][1]) // 2] ^= 0x40
    struct.pack_into("<Q", data, spans[40][0] + 1, 2**62)
    data[spans[65][0] - 4 : spans[65][0] + 20] = bytes(range(24))
    (tmp_path / "damaged.mcap").write_bytes(bytes(data))
    counts = recover(tmp_path / "damaged.mcap", tmp_path / "fixed.mcap")
    expected = [m for i, m in enumerate(messages) if i not in damaged]
    assert sum(counts.values()) == len(expected)
    with RecordingReader(tmp_path / "fixed.mcap") as reader:
        got = list(reader.messages())
        assert reader.indexed and reader.damage is None
        # three chunks, and the index (or the missing summary) that no longer matches the data
        assert "4 damaged places" in reader.metadata["fusion.recording"]["recovered_damage"]
    assert [(r.topic, r.log_time_ns) for r in got] == [(t, log) for t, _, log in expected]


def test_a_sparse_hole_is_skipped_not_read(one_message_per_chunk, tmp_path) -> None:
    """Gigabytes of hole between two chunks (and after the end): every chunk is read at once,
    without reading the hole."""
    path, messages, spans = one_message_per_chunk
    data = unindexed(path.read_bytes())
    cut = spans[30][0]
    hole = tmp_path / "hole.mcap"
    with open(hole, "wb") as f:
        f.write(data[:cut])
        f.seek(cut + (8 << 30))
        f.write(data[cut:])
        f.truncate(len(data) + (16 << 30))
    if hole.stat().st_blocks * 512 > 1 << 30:
        pytest.skip("this file system does not keep sparse files")
    with RecordingReader(hole) as reader:
        got, error = [], None
        try:
            for rec in reader.messages():
                got.append(rec)
        except CorruptRecordingError as exc:
            error = exc
    assert len(got) == len(messages) and error is not None


def test_an_index_naming_an_unknown_channel_is_not_trusted(one_message_per_chunk, capsys) -> None:
    """(It ended `fusion info` in a KeyError.) The index does not check against the channels,
    so the file is read chunk by chunk, and every message is still there."""
    from tests.recording_fuzz import index_unknown_channel

    path, messages, _ = one_message_per_chunk
    path.write_bytes(index_unknown_channel(random.Random(0), path.read_bytes(), path.parent))
    with RecordingReader(path) as reader:
        assert not reader.indexed
        assert reader.summary().message_count == len(messages)
    assert fusion_main(["info", str(path)]) in (0, 2)
    assert "KeyError" not in capsys.readouterr().err


def test_writer_chunk_size_is_bounded(tmp_path) -> None:
    with pytest.raises(RecordingError, match="chunk size"):
        RecordingWriter(tmp_path / "x.mcap", chunk_size=1 << 30)
