"""The wire format: messages to ZeroMQ multipart frames and back.

A message is ``[topic, header, buffer...]``. The header is a msgpack map holding the schema
version, the type name, every scalar field, and the name, dtype and shape of each array field;
each array travels as its own frame of raw bytes, so it is sent without a copy and decoded into a
read-only numpy view of the received frame without a copy. `docs/wire-format.md` is the
language-neutral description of the same thing.

`decode` trusts nothing: every malformed input raises `DecodeError` with a message saying what
was wrong and a one-word `reason`, and nothing else (no `KeyError`, no `ValueError`, no giant
allocation). It enforces everything the document states: ``v`` is the integer 1, integers fit in
signed 64 bits, a map has no duplicate keys, enumerations and array shapes are the ones each type
allows (`Message.wire_problem`), and a topic of the registry carries its registered type. What a
well-formed message *means* (image sizes, calibration, stamps) is `fusion.wire.validate`'s job.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from fusion.errors import DecodeError, EncodeError
from fusion.wire.messages import MESSAGE_TYPES, SCHEMA_VERSION, Message
from fusion.wire.services import SERVICES

#: Largest header a peer may send; real headers are a few hundred bytes.
MAX_HEADER_BYTES = 64 * 1024
#: Largest single array buffer (a 4K BGR frame is 25 MB); bounds what a peer can make us hold.
MAX_BUFFER_BYTES = 64 * 1024 * 1024
#: Largest number of elements along one dimension.
MAX_DIM = 1 << 24
MAX_TOPIC_BYTES = 256
#: The integers the format carries: signed 64-bit.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

Frame = bytes | memoryview
_HEADER_KEYS = {"v", "type", "fields", "buffers"}


def dtype_descr(dtype: np.dtype) -> str | list[list[str]]:
    """The wire description of a dtype: its typestr (``"|u1"``, ``"<f8"``) for a plain dtype,
    a list of ``[name, typestr]`` for a structured one."""
    if dtype.names is None:
        return dtype.str
    return [[name, dtype.fields[name][0].str] for name in dtype.names]


@functools.cache
def _scalar_fields(cls: type[Message]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in cls.ARRAY_FIELDS
    }


@functools.cache
def _expected_descr(cls: type[Message]) -> dict[str, Any]:
    return {name: dtype_descr(dtype) for name, (dtype, _) in cls.ARRAY_FIELDS.items()}


def encode(topic: str, msg: Message) -> list[Frame]:
    """Encode `msg` as the frames ``[topic, header, buffer...]`` to send with ``copy=False``.

    Arrays are not copied when they are C-contiguous; the caller must not modify them until the
    send has completed (in practice: do not reuse the array for the next message in place).
    """
    cls = type(msg)
    if MESSAGE_TYPES.get(cls.__name__) is not cls:
        raise EncodeError(f"cannot encode {cls.__name__}: not a registered message type")
    registered = SERVICES.get(topic)
    if registered is not None and registered.message_type is not cls:
        raise EncodeError(
            f"topic {topic!r} carries {registered.message_type.__name__}, not {cls.__name__}"
        )
    fields = {}
    for name, check in _field_checkers(cls).items():
        value = getattr(msg, name)
        if not check(value):  # numpy scalars (also in maps) become Python ones, then checked
            value = _plain(value)
        if not check(value):
            hint = _scalar_fields(cls)[name]
            raise EncodeError(f"cannot encode {cls.__name__}.{name}: {value!r:.80} is not {hint}")
        fields[name] = value
    buffers = []
    frames: list[Frame] = [topic.encode(), b""]
    for name, (dtype, ndims) in cls.ARRAY_FIELDS.items():
        array = getattr(msg, name)
        if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim not in ndims:
            got = (
                f"{array.dtype} with {array.ndim} dims"
                if isinstance(array, np.ndarray)
                else type(array).__name__
            )
            raise EncodeError(
                f"{cls.__name__}.{name} must be a numpy array of dtype {dtype} with "
                f"{' or '.join(map(str, ndims))} dims, got {got}"
            )
        array = np.ascontiguousarray(array)
        buffers.append([name, dtype_descr(dtype), list(array.shape)])
        frames.append(memoryview(array).cast("B") if array.size else b"")
    problem = msg.wire_problem()
    if problem is not None:
        raise EncodeError(f"cannot encode {cls.__name__}: {problem}")
    try:
        frames[1] = msgpack.packb(
            {"v": SCHEMA_VERSION, "type": cls.__name__, "fields": fields, "buffers": buffers}
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode {cls.__name__}: {exc}") from exc
    return frames


def _plain(value: Any) -> Any:
    """`value` with numpy scalars (also as the keys and values of a map) made Python ones."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def decode_header(header_bytes: Frame) -> dict[str, Any]:
    """Unpack and check the envelope of a header (version, type, keys)."""
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise DecodeError(
            f"header is {len(header_bytes)} bytes, limit {MAX_HEADER_BYTES}", "header"
        )
    try:
        header = msgpack.unpackb(
            bytes(header_bytes), raw=False, strict_map_key=True, object_pairs_hook=_unique_map
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise DecodeError(f"header is not valid msgpack: {exc}", "header") from exc
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        keys = [repr(k) for k in header] if isinstance(header, dict) else type(header).__name__
        raise DecodeError(
            f"header must be a map with keys {sorted(_HEADER_KEYS)}, got {keys}", "header"
        )
    if type(header["v"]) is not int or header["v"] != SCHEMA_VERSION:
        raise DecodeError(
            f"unknown schema version {header['v']!r:.40}; this build reads the integer "
            f"{SCHEMA_VERSION}",
            "version",
        )
    if not isinstance(header["type"], str) or header["type"] not in MESSAGE_TYPES:
        raise DecodeError(f"unknown message type {header['type']!r:.80}", "type")
    return header


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack's map hook: a map that names a key twice is malformed (the format has no rule for
    which value wins, so two decoders could read one message differently)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DecodeError(f"header repeats the map key {key!r:.80}", "header")
            seen.add(key)
    return out


def decode(frames: Sequence[Frame | Any]) -> tuple[str, Message]:
    """Decode ``[topic, header, buffer...]`` to ``(topic, message)``.

    Frames may be `bytes`, `memoryview` or `zmq.Frame`; arrays in the result are read-only views
    of the frames' memory. Raises `DecodeError` on any malformed input.
    """
    if len(frames) < 2:
        raise DecodeError(
            f"message has {len(frames)} frames, needs at least topic and header", "frames"
        )
    views = [_as_view(f) for f in frames]
    if len(views[0]) > MAX_TOPIC_BYTES:
        raise DecodeError(f"topic is {len(views[0])} bytes, limit {MAX_TOPIC_BYTES}", "topic")
    try:
        topic = bytes(views[0]).decode()
    except UnicodeDecodeError as exc:
        raise DecodeError("topic is not UTF-8", "topic") from exc
    header = decode_header(views[1])
    cls = MESSAGE_TYPES[header["type"]]
    registered = SERVICES.get(topic)
    if registered is not None and registered.message_type is not cls:
        raise DecodeError(
            f"{cls.__name__} on topic {topic!r}, which carries {registered.message_type.__name__}",
            "topic_type",
        )
    kwargs = _check_fields(cls, header["fields"])
    kwargs.update(_check_buffers(cls, header["buffers"], views[2:]))
    try:
        msg = cls(**kwargs)
    except Exception as exc:  # a __post_init__ check on otherwise well-typed input
        raise DecodeError(f"{cls.__name__} rejected its fields: {exc}", "fields") from exc
    problem = msg.wire_problem()
    if problem is not None:
        raise DecodeError(f"{cls.__name__}: {problem}", "rules")
    return topic, msg


def _as_view(frame: Any) -> memoryview:
    if isinstance(frame, memoryview):
        return frame.cast("B") if frame.format != "B" or frame.ndim != 1 else frame
    if isinstance(frame, bytes | bytearray):
        return memoryview(frame)
    buffer = getattr(frame, "buffer", None)  # zmq.Frame
    if isinstance(buffer, memoryview):
        return buffer
    raise DecodeError(f"frame of type {type(frame).__name__} is not bytes-like", "frames")


def _check_fields(cls: type[Message], fields: Any) -> dict[str, Any]:
    checkers = _field_checkers(cls)
    if not isinstance(fields, dict) or fields.keys() != checkers.keys():
        got = [repr(k) for k in fields] if isinstance(fields, dict) else type(fields).__name__
        raise DecodeError(f"{cls.__name__} fields must be {sorted(checkers)}, got {got}", "fields")
    for name, check in checkers.items():
        if not check(fields[name]):
            hint = _scalar_fields(cls)[name]
            value = fields[name]
            what = type(value).__name__
            if type(value) is int:
                what = f"{value} (outside signed 64-bit)"
            raise DecodeError(f"{cls.__name__}.{name} must be {hint}, got {what}", "fields")
    return fields


@functools.cache
def _field_checkers(cls: type[Message]) -> dict[str, Callable[[Any], bool]]:
    return {name: _checker(hint) for name, hint in _scalar_fields(cls).items()}


def _checker(hint: Any) -> Callable[[Any], bool]:
    """A predicate for values of the type `hint` (int, float, str, bool or dict[K, V])."""
    if typing.get_origin(hint) is dict:
        key_ok, value_ok = (_checker(a) for a in typing.get_args(hint))
        return lambda v: (
            isinstance(v, dict) and all(key_ok(k) and value_ok(x) for k, x in v.items())
        )
    if hint is float:
        return lambda v: type(v) is float or (type(v) is int and INT_MIN <= v <= INT_MAX)
    if hint is int:
        return lambda v: type(v) is int and INT_MIN <= v <= INT_MAX
    return lambda v: type(v) is hint


def _check_buffers(
    cls: type[Message], specs: Any, views: list[memoryview]
) -> dict[str, np.ndarray]:
    expected = _expected_descr(cls)
    if not isinstance(specs, list) or len(specs) != len(expected):
        raise DecodeError(
            f"{cls.__name__} needs {len(expected)} buffer specs, got {specs!r:.80}", "buffers"
        )
    if len(views) != len(expected):
        raise DecodeError(
            f"{cls.__name__} needs {len(expected)} buffer frames, got {len(views)}", "buffers"
        )
    arrays = {}
    for spec, view in zip(specs, views, strict=True):
        if not (
            isinstance(spec, list)
            and len(spec) == 3
            and isinstance(spec[0], str)
            and spec[0] in expected
        ):
            raise DecodeError(f"bad buffer spec {spec!r:.80} for {cls.__name__}", "buffers")
        name, descr, shape = spec
        dtype, ndims = cls.ARRAY_FIELDS[name]
        if descr != expected[name]:
            raise DecodeError(
                f"{cls.__name__}.{name} has dtype {descr!r:.120}, expected {expected[name]!r}",
                "buffers",
            )
        if (
            not isinstance(shape, list)
            or len(shape) not in ndims
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
            )
        ):
            raise DecodeError(f"{cls.__name__}.{name} has invalid shape {shape!r:.80}", "buffers")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > MAX_BUFFER_BYTES:
            raise DecodeError(
                f"{cls.__name__}.{name} declares {nbytes} bytes, limit {MAX_BUFFER_BYTES}",
                "buffers",
            )
        if len(view) != nbytes:
            raise DecodeError(
                f"{cls.__name__}.{name} buffer is {len(view)} bytes, shape {shape} of {dtype} "
                f"needs {nbytes}",
                "buffers",
            )
        arrays[name] = (
            np.frombuffer(view, dtype=dtype).reshape(shape) if nbytes else np.zeros(shape, dtype)
        )
        if name in arrays and arrays[name].flags.writeable:
            arrays[name].flags.writeable = False
    if set(arrays) != set(expected):
        raise DecodeError(
            f"{cls.__name__} buffers must be {sorted(expected)}, got {sorted(arrays)}", "buffers"
        )
    return arrays
