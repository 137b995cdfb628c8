"""The wire codec: property round trips of every type, and a corpus of malformed messages."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fusion.errors import DecodeError, EncodeError
from fusion.wire import codec
from fusion.wire.messages import (
    DETECTION_DTYPE,
    GT_BOX_DTYPE,
    MESSAGE_TYPES,
    RADAR_POINT_DTYPE,
    Calibration,
    CameraFrame,
    Detections,
    EgoMotion,
    GroundTruth,
    Message,
    RadarScan,
    ReplayControl,
)
from fusion.wire.services import SERVICES

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
texts = st.text(max_size=20)
floats = st.floats(allow_nan=False, width=64)


def header_fields() -> dict:
    return dict(
        seq=st.integers(0, 2**63 - 1),
        capture_ns=int64s,
        sensor_id=texts,
        clock=st.sampled_from(["monotonic", "realtime", "sim", "assigned"]),
        trace=st.dictionaries(texts, int64s, max_size=5),
    )


def structured(dtype: np.dtype) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(dtype, st.integers(0, 50))


#: The image shapes docs/wire-format.md allows per encoding.
IMAGES = {
    "bgr8": hnp.arrays(np.uint8, st.tuples(st.integers(0, 16), st.integers(0, 16), st.just(3))),
    "rgb8": hnp.arrays(np.uint8, st.tuples(st.integers(0, 16), st.integers(0, 16), st.just(3))),
    "mono8": hnp.arrays(np.uint8, st.tuples(st.integers(0, 16), st.integers(0, 16))),
    "jpeg": hnp.arrays(np.uint8, st.integers(0, 300)),
}

STRATEGIES = {
    CameraFrame: st.one_of(
        st.builds(
            CameraFrame,
            image=image,
            encoding=st.just(encoding),
            width_px=st.integers(0, 10000),
            height_px=st.integers(0, 10000),
            exposure_us=st.integers(0, 10**6),
            **header_fields(),
        )
        for encoding, image in IMAGES.items()
    ),
    RadarScan: st.builds(
        RadarScan, points=structured(RADAR_POINT_DTYPE), scan_period_ns=int64s, **header_fields()
    ),
    Detections: st.builds(
        Detections,
        objects=structured(DETECTION_DTYPE),
        mode=st.sampled_from(["fused", "camera_only", "radar_only"]),
        valid=st.booleans(),
        budget_miss=st.booleans(),
        health=st.dictionaries(texts, floats, max_size=4),
        source_seqs=st.dictionaries(texts, int64s, max_size=3),
        **header_fields(),
    ),
    EgoMotion: st.builds(
        EgoMotion,
        x_m=floats,
        y_m=floats,
        yaw_rad=floats,
        speed_mps=floats,
        yaw_rate_rps=floats,
        accel_mps2=floats,
        **header_fields(),
    ),
    GroundTruth: st.builds(GroundTruth, boxes=structured(GT_BOX_DTYPE), **header_fields()),
    Calibration: st.builds(
        Calibration,
        sensor_to_ref=hnp.arrays("<f8", (4, 4)),
        intrinsics=hnp.arrays("<f8", (3, 3)),
        distortion=hnp.arrays("<f8", st.integers(0, 8)),
        width_px=st.integers(0, 10000),
        height_px=st.integers(0, 10000),
        **header_fields(),
    ),
    ReplayControl: st.builds(
        ReplayControl,
        rate=floats,
        origin_ns=int64s,
        lockstep=st.booleans(),
        order=texts,
        sent_until_ns=int64s,
        final=st.booleans(),
        **header_fields(),
    ),
}


def test_every_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(MESSAGE_TYPES.values())


def assert_same(a: Message, b: Message) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.tobytes() == y.tobytes()  # bit-exact, NaN payloads included
        else:
            assert x == y, f.name


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
def test_round_trip(cls: type[Message]) -> None:
    registered = [t for t, s in SERVICES.items() if s.message_type is cls]
    topics = st.one_of(
        st.sampled_from(registered),
        st.text(min_size=1, max_size=30).filter(lambda t: t not in SERVICES),
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(STRATEGIES[cls], topics)
    def check(msg: Message, topic: str) -> None:
        frames = codec.encode(topic, msg)
        got_topic, got = codec.decode([bytes(f) for f in frames])
        assert got_topic == topic
        assert_same(msg, got)

    check()


def test_decode_is_zero_copy_and_read_only() -> None:
    image = np.arange(720 * 1280 * 3, dtype=np.uint32).astype(np.uint8).reshape(720, 1280, 3)
    frames = codec.encode("camera", CameraFrame(image=image))
    assert frames[2].obj is image  # the encoder sends the array's own memory
    buffer = bytearray(frames[2])
    _, msg = codec.decode([frames[0], frames[1], memoryview(buffer)])
    assert np.shares_memory(msg.image, np.frombuffer(buffer, np.uint8))
    assert not msg.image.flags.writeable
    np.testing.assert_array_equal(msg.image, image)


def test_non_contiguous_arrays_are_encoded() -> None:
    image = np.zeros((10, 20, 3), np.uint8)[:, ::2]
    _, msg = codec.decode(codec.encode("camera", CameraFrame(image=image)))
    assert msg.image.shape == (10, 10, 3)


@pytest.mark.parametrize(
    "msg, match",
    [
        (RadarScan(points=np.zeros(3, np.float32)), "dtype"),
        (RadarScan(points=np.zeros((3, 2), RADAR_POINT_DTYPE)), "dims"),
        (CameraFrame(image=np.zeros((2, 2), np.float32)), "dtype"),
        (Detections(objects=np.zeros(1, DETECTION_DTYPE), health={"x": object()}), "cannot encode"),
        (CameraFrame(image=np.zeros((2, 2), np.uint8), encoding="bgr8"), "does not fit"),
        (CameraFrame(image=np.zeros((2, 2, 3), np.uint8), encoding="bgra"), "encoding"),
        (Detections(objects=np.zeros(0, DETECTION_DTYPE), mode="guess"), "mode"),
        (EgoMotion(seq=2**63), "cannot encode"),
        (EgoMotion(clock="gps"), "clock"),
    ],
)
def test_encode_rejects_wrong_payloads(msg: Message, match: str) -> None:
    with pytest.raises(EncodeError, match=match):
        codec.encode("t", msg)


def test_encode_refuses_a_type_on_another_types_topic() -> None:
    with pytest.raises(EncodeError, match="carries CameraFrame"):
        codec.encode("camera", EgoMotion())


def test_decode_errors_name_their_reason() -> None:
    reasons = {}
    for name, frames, _ in MALFORMED:
        with pytest.raises(DecodeError) as info:
            codec.decode(frames)
        reasons[name] = info.value.reason
    assert reasons["empty"] == "frames" and reasons["topic too long"] == "topic"
    assert reasons["version 1.0"] == "version" and reasons["unknown type"] == "type"
    assert reasons["seq above int64"] == "fields" and reasons["truncated buffer"] == "buffers"
    assert reasons["duplicate field"] == "header" and reasons["bgr8 of 2 dims"] == "rules"
    assert reasons["type not the topic's"] == "topic_type"


def _good() -> list[bytes]:
    scan = RadarScan(points=np.zeros(4, RADAR_POINT_DTYPE), seq=1, sensor_id="radar")
    return [bytes(f) for f in codec.encode("radar", scan)]


def _header(**changes) -> bytes:
    header = msgpack.unpackb(_good()[1])
    header.update(changes)
    return msgpack.packb(header)


def _fields(**changes) -> bytes:
    header = msgpack.unpackb(_good()[1])
    header["fields"].update(changes)
    return msgpack.packb(header)


def _buffers(spec) -> bytes:
    return _header(buffers=spec)


def _duplicate_key(path: tuple[str, ...], key: str, value: object) -> bytes:
    """The good header with `key` written a second time (value `value`) in the map at `path`."""

    def pack(obj: object, at: tuple[str, ...]) -> bytes:
        if not isinstance(obj, dict):
            return msgpack.packb(obj)
        items = list(obj.items()) + ([(key, value)] if at == path else [])
        out = bytearray(msgpack.Packer().pack_map_header(len(items)))
        for k, v in items:
            out += msgpack.packb(k) + pack(v, (*at, k))
        return bytes(out)

    return pack(msgpack.unpackb(_good()[1]), ())


def _other(msg: Message, topic: str) -> list[bytes]:
    return [bytes(f) for f in codec.encode(topic, msg)]


def _mislabelled(topic: str, msg: Message) -> list[bytes]:
    """`msg` encoded on a topic the registry does not give its type (the encoder refuses)."""
    frames = _other(msg, "elsewhere")
    return [topic.encode(), *frames[1:]]


def _lying_camera(image: np.ndarray, encoding: str) -> list[bytes]:
    frames = _other(CameraFrame(image=image.reshape(-1), encoding="jpeg"), "camera")
    header = msgpack.unpackb(frames[1])
    header["fields"]["encoding"] = encoding
    header["buffers"][0][2] = list(image.shape)
    return [frames[0], msgpack.packb(header), *frames[2:]]


def _lying_calibration() -> list[bytes]:
    calib = Calibration(sensor_to_ref=np.eye(4), intrinsics=np.eye(3), distortion=np.zeros(5))
    frames = _other(calib, "calibration")
    header = msgpack.unpackb(frames[1])
    header["buffers"][0][2], header["buffers"][1][2] = [2, 8], [3, 3]
    return [frames[0], msgpack.packb(header), *frames[2:]]


GOOD = _good()
POINTS_DESCR = codec.dtype_descr(RADAR_POINT_DTYPE)

# (case, frames, what the error message must mention)
MALFORMED = [
    ("empty", [], "frames"),
    ("topic only", GOOD[:1], "frames"),
    ("missing buffer", GOOD[:2], "buffer frames"),
    ("extra frame", [*GOOD, b"x"], "buffer frames"),
    ("truncated buffer", [*GOOD[:2], GOOD[2][:-1]], "needs"),
    ("long buffer", [*GOOD[:2], GOOD[2] + b"\0"], "needs"),
    ("not msgpack", [GOOD[0], b"\xc1\xc1", GOOD[2]], "msgpack"),
    ("msgpack trailing bytes", [GOOD[0], GOOD[1] + b"\x00", GOOD[2]], "msgpack"),
    ("header not a map", [GOOD[0], msgpack.packb([1, 2]), GOOD[2]], "map"),
    ("header missing key", [GOOD[0], msgpack.packb({"v": 1}), GOOD[2]], "keys"),
    ("unknown version", [GOOD[0], _header(v=99), GOOD[2]], "schema version"),
    ("unknown type", [GOOD[0], _header(type="Lidar"), GOOD[2]], "unknown message type"),
    ("type of wrong kind", [GOOD[0], _header(type=[1]), GOOD[2]], "unknown message type"),
    ("fields not a map", [GOOD[0], _header(fields=3), GOOD[2]], "fields"),
    ("missing field", [GOOD[0], _header(fields={"seq": 1}), GOOD[2]], "fields"),
    ("seq is a string", [GOOD[0], _fields(seq="1"), GOOD[2]], "seq"),
    ("seq is a bool", [GOOD[0], _fields(seq=True), GOOD[2]], "seq"),
    ("capture_ns is float", [GOOD[0], _fields(capture_ns=1.5), GOOD[2]], "capture_ns"),
    ("trace values are str", [GOOD[0], _fields(trace={"a": "b"}), GOOD[2]], "trace"),
    ("sensor_id is bytes", [GOOD[0], _fields(sensor_id=b"r"), GOOD[2]], "sensor_id"),
    ("unknown dtype", [GOOD[0], _buffers([["points", "<f16", [4]]]), GOOD[2]], "dtype"),
    ("dtype not allowed", [GOOD[0], _buffers([["points", "|u1", [80]]]), GOOD[2]], "dtype"),
    ("absurd shape", [GOOD[0], _buffers([["points", POINTS_DESCR, [2**40]]]), GOOD[2]], "shape"),
    ("huge shape", [GOOD[0], _buffers([["points", POINTS_DESCR, [2**24]]]), GOOD[2]], "limit"),
    ("negative shape", [GOOD[0], _buffers([["points", POINTS_DESCR, [-4]]]), GOOD[2]], "shape"),
    ("wrong ndim", [GOOD[0], _buffers([["points", POINTS_DESCR, [2, 2]]]), GOOD[2]], "shape"),
    ("shape not a list", [GOOD[0], _buffers([["points", POINTS_DESCR, 4]]), GOOD[2]], "shape"),
    ("unknown buffer", [GOOD[0], _buffers([["pts", POINTS_DESCR, [4]]]), GOOD[2]], "buffer spec"),
    ("spec not a list", [GOOD[0], _buffers("x"), GOOD[2]], "buffer spec"),
    ("topic not utf-8", [b"\xff\xfe", *GOOD[1:]], "UTF-8"),
    ("topic too long", [b"t" * 1000, *GOOD[1:]], "topic"),
    ("header too long", [GOOD[0], b"\x00" * (codec.MAX_HEADER_BYTES + 1), GOOD[2]], "header"),
    ("frame not bytes", [GOOD[0], GOOD[1], 12], "bytes-like"),
    # What docs/wire-format.md states beyond types: v is the integer 1, ints are signed 64-bit,
    # no map repeats a key, enumerations and shapes per type, one type per registered topic.
    ("version 1.0", [GOOD[0], _header(v=1.0), GOOD[2]], "schema version"),
    ("version true", [GOOD[0], _header(v=True), GOOD[2]], "schema version"),
    ("seq above int64", [GOOD[0], _fields(seq=2**64 - 1), GOOD[2]], "outside signed 64-bit"),
    ("trace above int64", [GOOD[0], _fields(trace={"a": 2**63}), GOOD[2]], "trace"),
    ("duplicate header key", [GOOD[0], _duplicate_key((), "v", 1), GOOD[2]], "repeats"),
    (
        "duplicate field",
        [GOOD[0], _duplicate_key(("fields",), "seq", 9), GOOD[2]],
        "repeats",
    ),
    ("unknown clock", [GOOD[0], _fields(clock="gps"), GOOD[2]], "clock"),
    (
        "type not the topic's",
        _mislabelled("camera", RadarScan(points=np.zeros(0, RADAR_POINT_DTYPE))),
        "carries",
    ),
    ("bgr8 of 2 dims", _lying_camera(np.zeros((4, 4), np.uint8), "bgr8"), "does not fit"),
    ("jpeg of 3 dims", _lying_camera(np.zeros((4, 4, 3), np.uint8), "jpeg"), "does not fit"),
    ("mono8 of 3 dims", _lying_camera(np.zeros((4, 4, 3), np.uint8), "mono8"), "does not fit"),
    ("rgb8 of 4 channels", _lying_camera(np.zeros((4, 4, 4), np.uint8), "rgb8"), "does not fit"),
    ("unknown encoding", _lying_camera(np.zeros((4, 4, 3), np.uint8), "yuv422"), "encoding"),
    ("calibration 2x8", _lying_calibration(), "4x4"),
]


@pytest.mark.parametrize("frames, match", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_messages_raise_decode_error(frames: list, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        codec.decode(frames)


def test_good_message_decodes() -> None:
    topic, msg = codec.decode(GOOD)
    assert topic == "radar" and msg.seq == 1 and len(msg.points) == 4


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_random_frames_only_ever_raise_decode_error(frames: list[bytes]) -> None:
    with contextlib.suppress(DecodeError):
        codec.decode(frames)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_headers_only_ever_raise_decode_error(data: st.DataObject) -> None:
    header = bytearray(GOOD[1])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(header) - 1))
        header[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        codec.decode([GOOD[0], bytes(header), GOOD[2]])
