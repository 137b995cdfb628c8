"""Writing recordings: chunked, compressed (zstd by default), indexed MCAP files.

`RecordingWriter` writes with the `mcap` package. The MCAP log time of a message is when it was
received (recorder) or written, on the monotonic clock unless the writer's metadata says
otherwise; the MCAP publish time is the message's ``capture_ns``. Both are kept.

`RecordingWriter.write_view` adds view channels (`fusion.logs.framing.ViewSchema`: the same data
in another viewer's encoding, such as Foxglove's protobuf schemas) beside our own channels, in
the same chunks, so one file serves both `fusion play` and Foxglove.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcap.writer import CompressionType, Writer

from fusion.errors import DecodeError, RecordingError
from fusion.logs.framing import (
    MESSAGE_ENCODING,
    METADATA_NAME,
    PROFILE,
    SCHEMA_ENCODING,
    ViewSchema,
    as_view,
    channel_metadata,
    frame_message,
    schema_json,
)
from fusion.wire import codec
from fusion.wire.messages import MESSAGE_TYPES, Message

#: Chunks are finished once their uncompressed size passes this; a camera frame is one chunk.
DEFAULT_CHUNK_SIZE = 1024 * 1024
#: The largest chunk size a writer takes: with the largest message on top, a chunk stays well
#: under what readers accept (`fusion.logs._scan.MAX_CHUNK_BYTES`).
MAX_CHUNK_SIZE = 32 * 1024 * 1024
COMPRESSIONS = {
    "zstd": CompressionType.ZSTD,
    "lz4": CompressionType.LZ4,
    "none": CompressionType.NONE,
}


class RecordingWriter:
    """Writes a recording. Use as a context manager, or call `close` to finish a valid file.

    Each finished chunk is handed to the operating system at once, so a writer killed with
    SIGKILL leaves every finished chunk in the file for `recover`; `flush` finishes the chunk in
    progress early (the recorder does so every second).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression: str = "zstd",
        metadata: dict[str, str] | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise RecordingError(
                f"compression must be one of {sorted(COMPRESSIONS)}, got {compression!r}"
            )
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise RecordingError(
                f"chunk size must be 1 to {MAX_CHUNK_SIZE} bytes, got {chunk_size}"
            )
        self.path = Path(path)
        try:
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise RecordingError(f"cannot create recording {self.path}: {exc}") from exc
        self._mcap = Writer(
            self._file, chunk_size=chunk_size, compression=COMPRESSIONS[compression]
        )
        self._mcap.start(profile=PROFILE, library="fusion")
        info = {
            "log_time_clock": "monotonic",
            "publish_time": "capture_ns",
            "created_utc_ns": str(time.time_ns()),
            "host": os.uname().nodename,
        }
        self._mcap.add_metadata(METADATA_NAME, {**info, **(metadata or {})})
        self._channels: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self._view_channels: dict[str, tuple[int, ViewSchema]] = {}
        self._view_schemas: dict[ViewSchema, int] = {}
        self.counts: dict[str, int] = {}
        #: messages written per view channel (not in `counts`: those are our own topics)
        self.view_counts: dict[str, int] = {}
        self.closed = False

    def write(self, topic: str, msg: Message, log_time_ns: int | None = None) -> None:
        """Encode `msg` and write it; `log_time_ns` defaults to now (monotonic)."""
        frames = codec.encode(topic, msg)
        self.write_frames(
            topic,
            frames,
            time.monotonic_ns() if log_time_ns is None else log_time_ns,
            msg.capture_ns,
            sequence=msg.seq,
        )

    def write_frames(
        self,
        topic: str,
        frames: Sequence[Any],
        log_time_ns: int,
        publish_time_ns: int,
        *,
        sequence: int = 0,
    ) -> None:
        """Write already-encoded wire frames ``[topic, header, buffer...]`` byte for byte."""
        if self.closed:
            raise RecordingError(f"{self.path} is closed")
        views = [as_view(f) for f in frames]
        if len(views) < 2 or views[0] != topic.encode():
            raise RecordingError(
                f"frames for {topic!r} must start with the topic frame and a header"
            )
        channel_id = self._channels.get(topic)
        if channel_id is None:
            if topic in self._view_channels:
                raise RecordingError(f"{topic!r} is a view channel of this recording")
            channel_id = self._register(topic, views[1])
        try:
            self._mcap.add_message(
                channel_id,
                log_time=max(0, log_time_ns),
                data=frame_message(views[1:]),
                publish_time=max(0, publish_time_ns),
                sequence=sequence & 0xFFFFFFFF,
            )
            self.counts[topic] = self.counts.get(topic, 0) + 1
            # Finished chunks go to the OS now (an empty buffer makes this a no-op).
            self._file.flush()
        except OSError as exc:
            raise self._failed(exc) from exc

    def write_view(
        self,
        topic: str,
        schema: ViewSchema,
        data: bytes | memoryview,
        log_time_ns: int,
        publish_time_ns: int,
        *,
        sequence: int = 0,
    ) -> None:
        """Write one message of the view channel `topic`, registered with `schema` on its first
        message. A view topic cannot share its name with one of our own topics, nor change its
        schema (`RecordingError`)."""
        if self.closed:
            raise RecordingError(f"{self.path} is closed")
        known = self._view_channels.get(topic)
        if known is None:
            channel_id = self._register_view(topic, schema)
        elif known[1] != schema:
            raise RecordingError(
                f"view channel {topic!r} has schema {known[1].name!r}, cannot write a "
                f"{schema.name!r} message on it"
            )
        else:
            channel_id = known[0]
        try:
            self._mcap.add_message(
                channel_id,
                log_time=max(0, log_time_ns),
                data=data,
                publish_time=max(0, publish_time_ns),
                sequence=sequence & 0xFFFFFFFF,
            )
            self.view_counts[topic] = self.view_counts.get(topic, 0) + 1
            self._file.flush()
        except OSError as exc:
            raise self._failed(exc) from exc

    def _register_view(self, topic: str, schema: ViewSchema) -> int:
        if topic in self._channels:
            raise RecordingError(f"{topic!r} is one of this recording's own topics, not a view")
        schema_id = self._view_schemas.get(schema)
        if schema_id is None and schema.encoding:
            schema_id = self._mcap.register_schema(schema.name, schema.encoding, schema.data)
            self._view_schemas[schema] = schema_id
        channel_id = self._mcap.register_channel(topic, schema.message_encoding, schema_id or 0)
        self._view_channels[topic] = (channel_id, schema)
        return channel_id

    def _register(self, topic: str, header: memoryview) -> int:
        try:
            message_type = codec.decode_header(header)["type"]
        except DecodeError as exc:
            raise RecordingError(f"cannot record {topic!r}: {exc}") from exc
        schema_id = self._schemas.get(message_type)
        if schema_id is None:
            schema_id = self._mcap.register_schema(
                message_type, SCHEMA_ENCODING, schema_json(MESSAGE_TYPES[message_type])
            )
            self._schemas[message_type] = schema_id
        channel_id = self._mcap.register_channel(
            topic, MESSAGE_ENCODING, schema_id, channel_metadata(topic, message_type)
        )
        self._channels[topic] = channel_id
        return channel_id

    def flush(self) -> None:
        """Finish the chunk in progress and hand it to the OS."""
        if not self.closed:
            try:
                self._mcap.flush()
            except OSError as exc:
                raise self._failed(exc) from exc

    def close(self) -> None:
        """Write the summary and footer; the file is then valid and indexed."""
        if self.closed:
            return
        self.closed = True
        try:
            self._mcap.finish()
            self._file.close()
        except OSError as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: OSError) -> RecordingError:
        """Stop writing after an I/O error (a full disk): what reached the disk stays there."""
        self.closed = True
        with contextlib.suppress(OSError):
            self._file.close()
        return RecordingError(
            f"writing {self.path} failed: {exc.strerror or exc}; it holds every chunk finished "
            f"before ({sum(self.counts.values())} messages): run `fusion recover {self.path} "
            "FIXED.mcap` with FIXED on a disk with space"
        )

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
