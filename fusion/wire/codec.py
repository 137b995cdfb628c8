"""The wire format: messages to ZeroMQ multipart frames and back.

A message is ``[topic, header, buffer...]``. The header is a msgpack map holding the schema
version, the type name, every scalar field, and the name, dtype and shape of each array field;
each array travels as its own frame of raw bytes, so it is sent without a copy and decoded into a
read-only numpy view of the received frame without a copy. `docs/wire-format.md` is the
language-neutral description of the same thing.

`decode` trusts nothing: every malformed input raises `DecodeError` with a message saying what
was wrong, and nothing else (no `KeyError`, no `ValueError`, no giant allocation).
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

#: Largest header a peer may send; real headers are a few hundred bytes.
MAX_HEADER_BYTES = 64 * 1024
#: Largest single array buffer (a 4K BGR frame is 25 MB); bounds what a peer can make us hold.
MAX_BUFFER_BYTES = 64 * 1024 * 1024
#: Largest number of elements along one dimension.
MAX_DIM = 1 << 24
MAX_TOPIC_BYTES = 256

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
    fields = {}
    for name in _scalar_fields(cls):
        value = getattr(msg, name)
        if isinstance(value, np.generic):
            value = value.item()
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
    try:
        frames[1] = msgpack.packb(
            {"v": SCHEMA_VERSION, "type": cls.__name__, "fields": fields, "buffers": buffers}
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode {cls.__name__}: {exc}") from exc
    return frames


def decode_header(header_bytes: Frame) -> dict[str, Any]:
    """Unpack and check the envelope of a header (version, type, keys)."""
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise DecodeError(f"header is {len(header_bytes)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(bytes(header_bytes), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise DecodeError(f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        keys = [repr(k) for k in header] if isinstance(header, dict) else type(header).__name__
        raise DecodeError(f"header must be a map with keys {sorted(_HEADER_KEYS)}, got {keys}")
    if header["v"] != SCHEMA_VERSION:
        raise DecodeError(
            f"unknown schema version {header['v']!r}; this build reads {SCHEMA_VERSION}"
        )
    if not isinstance(header["type"], str) or header["type"] not in MESSAGE_TYPES:
        raise DecodeError(f"unknown message type {header['type']!r}")
    return header


def decode(frames: Sequence[Frame | Any]) -> tuple[str, Message]:
    """Decode ``[topic, header, buffer...]`` to ``(topic, message)``.

    Frames may be `bytes`, `memoryview` or `zmq.Frame`; arrays in the result are read-only views
    of the frames' memory. Raises `DecodeError` on any malformed input.
    """
    if len(frames) < 2:
        raise DecodeError(f"message has {len(frames)} frames, needs at least topic and header")
    views = [_as_view(f) for f in frames]
    if len(views[0]) > MAX_TOPIC_BYTES:
        raise DecodeError(f"topic is {len(views[0])} bytes, limit {MAX_TOPIC_BYTES}")
    try:
        topic = bytes(views[0]).decode()
    except UnicodeDecodeError as exc:
        raise DecodeError("topic is not UTF-8") from exc
    header = decode_header(views[1])
    cls = MESSAGE_TYPES[header["type"]]
    kwargs = _check_fields(cls, header["fields"])
    kwargs.update(_check_buffers(cls, header["buffers"], views[2:]))
    try:
        return topic, cls(**kwargs)
    except Exception as exc:  # a __post_init__ check on otherwise well-typed input
        raise DecodeError(f"{cls.__name__} rejected its fields: {exc}") from exc


def _as_view(frame: Any) -> memoryview:
    if isinstance(frame, memoryview):
        return frame.cast("B") if frame.format != "B" or frame.ndim != 1 else frame
    if isinstance(frame, bytes | bytearray):
        return memoryview(frame)
    buffer = getattr(frame, "buffer", None)  # zmq.Frame
    if isinstance(buffer, memoryview):
        return buffer
    raise DecodeError(f"frame of type {type(frame).__name__} is not bytes-like")


def _check_fields(cls: type[Message], fields: Any) -> dict[str, Any]:
    checkers = _field_checkers(cls)
    if not isinstance(fields, dict) or fields.keys() != checkers.keys():
        got = [repr(k) for k in fields] if isinstance(fields, dict) else type(fields).__name__
        raise DecodeError(f"{cls.__name__} fields must be {sorted(checkers)}, got {got}")
    for name, check in checkers.items():
        if not check(fields[name]):
            hint = _scalar_fields(cls)[name]
            raise DecodeError(
                f"{cls.__name__}.{name} must be {hint}, got {type(fields[name]).__name__}"
            )
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
        return lambda v: type(v) is float or type(v) is int
    if hint is int:
        return lambda v: type(v) is int
    return lambda v: type(v) is hint


def _check_buffers(
    cls: type[Message], specs: Any, views: list[memoryview]
) -> dict[str, np.ndarray]:
    expected = _expected_descr(cls)
    if not isinstance(specs, list) or len(specs) != len(expected):
        raise DecodeError(f"{cls.__name__} needs {len(expected)} buffer specs, got {specs!r:.80}")
    if len(views) != len(expected):
        raise DecodeError(f"{cls.__name__} needs {len(expected)} buffer frames, got {len(views)}")
    arrays = {}
    for spec, view in zip(specs, views, strict=True):
        if not (
            isinstance(spec, list)
            and len(spec) == 3
            and isinstance(spec[0], str)
            and spec[0] in expected
        ):
            raise DecodeError(f"bad buffer spec {spec!r:.80} for {cls.__name__}")
        name, descr, shape = spec
        dtype, ndims = cls.ARRAY_FIELDS[name]
        if descr != expected[name]:
            raise DecodeError(
                f"{cls.__name__}.{name} has dtype {descr!r:.120}, expected {expected[name]!r}"
            )
        if (
            not isinstance(shape, list)
            or len(shape) not in ndims
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
            )
        ):
            raise DecodeError(f"{cls.__name__}.{name} has invalid shape {shape!r:.80}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > MAX_BUFFER_BYTES:
            raise DecodeError(
                f"{cls.__name__}.{name} declares {nbytes} bytes, limit {MAX_BUFFER_BYTES}"
            )
        if len(view) != nbytes:
            raise DecodeError(
                f"{cls.__name__}.{name} buffer is {len(view)} bytes, shape {shape} of {dtype} "
                f"needs {nbytes}"
            )
        arrays[name] = (
            np.frombuffer(view, dtype=dtype).reshape(shape) if nbytes else np.zeros(shape, dtype)
        )
        if name in arrays and arrays[name].flags.writeable:
            arrays[name].flags.writeable = False
    if set(arrays) != set(expected):
        raise DecodeError(
            f"{cls.__name__} buffers must be {sorted(expected)}, got {sorted(arrays)}"
        )
    return arrays
