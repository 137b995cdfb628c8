"""How a recording holds our messages inside MCAP: encodings, framing and `RecordedMessage`.

Each topic is one MCAP channel whose schema is named after the message type (the schema data is
JSON listing the type's fields and array dtypes, `schema_json`). Each MCAP message holds the
topic's wire frames ``[header, buffer...]`` exactly as they travel over ZeroMQ (the topic frame
is the channel), framed as a u32 frame count and, per frame, a u64 length and its bytes
(`frame_message` / `unframe_message`), so a replay publishes the bytes that were recorded.
`docs/wire-format.md` ("In recordings") describes the layout for readers in other languages.

A recording may also hold *view* channels beside them: the same data in another encoding for
another viewer (Foxglove's protobuf schemas, JSON for plots; `fusion.logs.foxglove`), described
by a `ViewSchema`. They are derived copies, never replayed; `RecordingReader` keeps them apart.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusion.errors import DecodeError
from fusion.wire import codec, services
from fusion.wire.messages import SCHEMA_VERSION, Message

#: MCAP channel ``message_encoding`` of every channel: the framing below around the wire frames.
MESSAGE_ENCODING = "fusion-wire/1"
#: MCAP schema ``encoding``: the schema data is JSON describing the message type's fields.
SCHEMA_ENCODING = "fusion-schema/1"
PROFILE = "fusion"
#: Name of the metadata record describing the recording (who wrote it, which clock).
METADATA_NAME = "fusion.recording"
#: Small misaligned buffers are copied on `RecordedMessage.decode` so float arrays come out aligned.
_ALIGN_COPY_MAX_BYTES = 64 * 1024

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

Frame = bytes | memoryview


@dataclass(frozen=True)
class ViewSchema:
    """The MCAP schema and message encoding of a view channel (anything but our own encoding):
    ``name`` (``foxglove.CompressedImage``), schema ``encoding`` (``protobuf``, ``jsonschema``;
    empty for a schemaless channel), the schema ``data``, and the channel's
    ``message_encoding`` (``protobuf``, ``json``)."""

    name: str
    encoding: str
    data: bytes
    message_encoding: str


def frame_message(frames: Sequence[Frame]) -> bytes:
    """The MCAP message data for wire frames ``[header, buffer...]`` (no topic frame):
    a u32 frame count, then per frame a u64 length and its bytes (little-endian)."""
    parts: list[Frame] = [_U32.pack(len(frames))]
    for frame in frames:
        parts.append(_U64.pack(len(frame)))
        parts.append(frame)
    return b"".join(parts)


def unframe_message(data: memoryview) -> list[memoryview]:
    """The frames ``[header, buffer...]`` in MCAP message data, as views of `data`."""
    if len(data) < 4:
        raise DecodeError(f"message data is {len(data)} bytes, too short for a frame count")
    (count,) = _U32.unpack_from(data, 0)
    pos = 4
    frames = []
    for i in range(count):
        if pos + 8 > len(data):
            raise DecodeError(f"message data ends inside the length of frame {i} of {count}")
        (length,) = _U64.unpack_from(data, pos)
        pos += 8
        if pos + length > len(data):
            raise DecodeError(
                f"frame {i} of {count} declares {length} bytes, {len(data) - pos} left"
            )
        frames.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} bytes after the last of {count} frames")
    return frames


def schema_json(cls: type[Message]) -> bytes:
    """The schema data of a message type: its scalar fields and its array fields' dtypes."""
    hints = typing.get_type_hints(cls)
    scalars = {
        f.name: _hint_name(hints[f.name])
        for f in dataclasses.fields(cls)
        if f.name not in cls.ARRAY_FIELDS
    }
    arrays = {
        name: {"dtype": codec.dtype_descr(dtype), "ndims": list(ndims)}
        for name, (dtype, ndims) in cls.ARRAY_FIELDS.items()
    }
    doc = {
        "type": cls.__name__,
        "schema_version": SCHEMA_VERSION,
        "fields": scalars,
        "arrays": arrays,
    }
    return json.dumps(doc, sort_keys=True).encode()


def _hint_name(hint: Any) -> str:
    return str(hint) if typing.get_origin(hint) else hint.__name__


def channel_metadata(topic: str, message_type: str) -> dict[str, str]:
    """The metadata of a topic's channel: its type and, from the registry, rate and delivery."""
    meta = {"message_type": message_type, "schema_version": str(SCHEMA_VERSION)}
    svc = services.SERVICES.get(topic)
    if svc is not None:
        meta.update(
            rate_hz=str(svc.rate_hz),
            latest_only=str(svc.latest_only).lower(),
            queue_size=str(svc.queue_size),
        )
    return meta


def as_view(frame: Any) -> memoryview:
    """A flat byte view of a frame given as bytes, a memoryview or a ``zmq.Frame``."""
    if isinstance(frame, memoryview):
        return frame.cast("B") if frame.format != "B" or frame.ndim != 1 else frame
    if isinstance(frame, bytes | bytearray):
        return memoryview(frame)
    return frame.buffer  # zmq.Frame


@dataclass(frozen=True)
class RecordedMessage:
    """One recorded message. `frames` is ``[topic, header, buffer...]`` as on the wire; the
    header and buffers are views of the message's data (holding one keeps that alive)."""

    topic: str
    log_time_ns: int
    publish_time_ns: int
    sequence: int
    frames: list[Frame]

    def decode(self) -> Message:
        """The message, its arrays read-only views of the recording's buffers."""
        frames = [
            bytes(f) if i >= 2 and len(f) <= _ALIGN_COPY_MAX_BYTES and _address(f) % 8 else f
            for i, f in enumerate(self.frames)
        ]
        return codec.decode(frames)[1]


def _address(view: Frame) -> int:
    if not len(view):
        return 0
    return np.frombuffer(view, np.uint8).ctypes.data


@dataclass(frozen=True)
class ViewMessage:
    """One recorded message of a view channel (see `ViewSchema`): its bytes as stored (a view
    of the chunk's data), never decoded here."""

    topic: str
    log_time_ns: int
    publish_time_ns: int
    sequence: int
    schema: ViewSchema
    data: Frame
