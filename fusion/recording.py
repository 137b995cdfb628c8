"""Recordings: MCAP files of wire-encoded messages, and reading, summarising and repairing them.

A recording is a chunked, compressed (zstd by default), indexed MCAP file written with the
`mcap` package. Each topic is one channel whose schema is named after the message type; each
MCAP message holds the topic's wire frames ``[header, buffer...]`` exactly as they travel over
ZeroMQ (the topic frame is the channel), so a replay publishes the bytes that were recorded. The
MCAP log time is when the message was received (recorder) or written, on the monotonic clock
unless the writer says otherwise; the MCAP publish time is the message's ``capture_ns``. Both are
kept. `docs/wire-format.md` ("In recordings") describes the layout for readers in other languages.

`RecordingReader` uses the file's summary (chunk indexes, message indexes) to read only the
chunks a topic filter and a time window need. When the summary is missing or damaged (a recorder
killed with SIGKILL, a truncated copy) it scans the data section chunk by chunk instead and uses
every complete chunk before the damage; the damage itself is reported as a
`CorruptRecordingError` naming the file and byte offset. `recover` rewrites those complete chunks
into a new, valid, indexed file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import io
import itertools
import json
import logging
import os
import statistics as pystats
import struct
import time
import typing
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, ChunkIndex, Metadata, MetadataIndex, Schema, Statistics
from mcap.writer import CompressionType, Writer

from fusion.errors import CorruptRecordingError, DecodeError, RecordingError
from fusion.wire import codec, services
from fusion.wire.messages import MESSAGE_TYPES, SCHEMA_VERSION, Message

log = logging.getLogger(__name__)

#: MCAP channel ``message_encoding`` of every channel: the framing below around the wire frames.
MESSAGE_ENCODING = "fusion-wire/1"
#: MCAP schema ``encoding``: the schema data is JSON describing the message type's fields.
SCHEMA_ENCODING = "fusion-schema/1"
PROFILE = "fusion"
#: Name of the metadata record describing the recording (who wrote it, which clock).
METADATA_NAME = "fusion.recording"
#: Chunks are finished once their uncompressed size passes this; a camera frame is one chunk.
DEFAULT_CHUNK_SIZE = 1024 * 1024
COMPRESSIONS = {
    "zstd": CompressionType.ZSTD,
    "lz4": CompressionType.LZ4,
    "none": CompressionType.NONE,
}
#: An interval on a topic longer than this many times its median (non-zero) interval is a gap.
GAP_FACTOR = 3.0
#: Largest chunk (uncompressed) a reader accepts; bounds what a damaged length can make it allocate.
MAX_CHUNK_BYTES = 1 << 30
#: Chunks decompressed ahead of the one being read (in worker threads).
PREFETCH_CHUNKS = 4
#: Small misaligned buffers are copied on `RecordedMessage.decode` so float arrays come out aligned.
_ALIGN_COPY_MAX_BYTES = 64 * 1024

_MAGIC = b"\x89MCAP0\r\n"
_RECORD = struct.Struct("<BQ")  # opcode, length of the body that follows
_CHUNK = struct.Struct("<QQQI")  # message start, end, uncompressed size, uncompressed crc
_MESSAGE = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
_FOOTER = struct.Struct("<BQQQI")  # opcode, length (20), summary start, summary offset start, crc
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INDEX_ENTRY = struct.Struct("<QQ")  # message index: log time, offset in the chunk

Frame = bytes | memoryview
#: A message in a chunk: channel id, sequence, log time, publish time, data.
_Record = tuple[int, int, int, int, memoryview]


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


def _channel_metadata(topic: str, message_type: str) -> dict[str, str]:
    meta = {"message_type": message_type, "schema_version": str(SCHEMA_VERSION)}
    svc = services.SERVICES.get(topic)
    if svc is not None:
        meta.update(
            rate_hz=str(svc.rate_hz),
            latest_only=str(svc.latest_only).lower(),
            queue_size=str(svc.queue_size),
        )
    return meta


def _as_view(frame: Any) -> memoryview:
    if isinstance(frame, memoryview):
        return frame.cast("B") if frame.format != "B" or frame.ndim != 1 else frame
    if isinstance(frame, bytes | bytearray):
        return memoryview(frame)
    return frame.buffer  # zmq.Frame


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
        self.counts: dict[str, int] = {}
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
        views = [_as_view(f) for f in frames]
        if len(views) < 2 or views[0] != topic.encode():
            raise RecordingError(
                f"frames for {topic!r} must start with the topic frame and a header"
            )
        channel_id = self._channels.get(topic)
        if channel_id is None:
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
            topic, MESSAGE_ENCODING, schema_id, _channel_metadata(topic, message_type)
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


@dataclass(frozen=True)
class RecordedMessage:
    """One recorded message. `frames` is ``[topic, header, buffer...]`` as on the wire; the
    header and buffers are views of the decompressed chunk (holding one keeps its chunk alive)."""

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


@dataclass
class _Chunk:
    offset: int  # of the chunk record's opcode
    length: int  # of the whole record
    start_ns: int
    end_ns: int
    #: channel id -> log times of its messages (from message indexes or a scan); None: unknown
    log_times: dict[int, list[int]] | None = None
    #: channel ids with messages in the chunk; None: unknown until read
    channel_ids: frozenset[int] | None = None
    index_offsets: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Gap:
    """An interval on one topic longer than `GAP_FACTOR` times its median interval."""

    topic: str
    start_ns: int
    duration_ns: int


@dataclass(frozen=True)
class TopicSummary:
    topic: str
    message_type: str
    count: int
    first_ns: int
    last_ns: int
    rate_hz: float
    nominal_rate_hz: float | None
    gaps: tuple[Gap, ...]


@dataclass(frozen=True)
class RecordingSummary:
    """What `fusion info` prints. Times are MCAP log times (ns); sizes in bytes."""

    path: str
    size_bytes: int
    indexed: bool
    start_ns: int
    end_ns: int
    message_count: int
    chunk_count: int
    compressed_bytes: int
    uncompressed_bytes: int
    topics: dict[str, TopicSummary]
    metadata: dict[str, dict[str, str]]
    damage: str | None

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9 if self.message_count else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "topics"}
        out["duration_s"] = self.duration_s
        out["topics"] = {
            name: {**t.__dict__, "gaps": [g.__dict__ for g in t.gaps]}
            for name, t in self.topics.items()
        }
        return out

    def format(self) -> str:
        ratio = self.uncompressed_bytes / self.compressed_bytes if self.compressed_bytes else 1.0
        lines = [
            f"{self.path}: {self.size_bytes / 1e6:.1f} MB, {self.duration_s:.2f} s, "
            f"{self.message_count} messages in {self.chunk_count} chunks "
            f"(compression {ratio:.2f}x), {'indexed' if self.indexed else 'NOT indexed (scanned)'}",
            f"{'topic':<14} {'type':<12} {'count':>7} {'rate_hz':>8} {'nominal':>8} {'gaps':>5}"
            "  longest gap",
        ]
        for t in self.topics.values():
            nominal = f"{t.nominal_rate_hz:.1f}" if t.nominal_rate_hz else "-"
            longest = max(t.gaps, key=lambda g: g.duration_ns, default=None)
            where = (
                f"{longest.duration_ns / 1e9:.3f} s at "
                f"+{(longest.start_ns - self.start_ns) / 1e9:.2f} s"
                if longest
                else "-"
            )
            lines.append(
                f"{t.topic:<14} {t.message_type:<12} {t.count:>7} {t.rate_hz:>8.2f} {nominal:>8} "
                f"{len(t.gaps):>5}  {where}"
            )
        for name, values in self.metadata.items():
            lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
        if self.damage:
            lines.append(f"DAMAGED: {self.damage}")
        return "\n".join(lines)


class RecordingReader:
    """Reads a recording: `messages` (filtered by topic and log time) and `summary`.

    `damage` is the `CorruptRecordingError` found on opening (None for an intact file). Reading
    never stops early for damage it can work around: `messages` yields every message of every
    complete chunk first and raises the error afterwards.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise RecordingError(f"cannot open recording {self.path}: {exc}") from exc
        self.size_bytes = os.fstat(self._file.fileno()).st_size
        self.schemas: dict[int, Schema] = {}
        self.channels: dict[int, Channel] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self._chunks: list[_Chunk] = []
        self._statistics: Statistics | None = None
        self.damage: CorruptRecordingError | None = None
        #: chunks decompressed so far (a measure of how much a query had to read)
        self.chunks_read = 0
        self._pool: ThreadPoolExecutor | None = None
        if self._read(0, 8) != _MAGIC:
            self.close()
            raise CorruptRecordingError(
                f"{self.path} is not an MCAP recording (no MCAP magic at offset 0, "
                f"{self.size_bytes} bytes)",
                path=str(self.path),
                offset=0,
            )
        why = self._load_summary()
        self.indexed = why is None
        if why is not None:
            log.warning("%s: %s; scanning the file chunk by chunk", self.path, why)
            self._scan()

    # -- opening ---------------------------------------------------------------------------

    def _read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (a damaged length never reads past the end)."""
        self._file.seek(offset)
        return self._file.read(max(0, min(length, self.size_bytes - offset)))

    def _corrupt(self, offset: int, what: str) -> CorruptRecordingError:
        return CorruptRecordingError(
            f"{self.path} is damaged at byte offset {offset}: {what}; "
            f"run `fusion recover {self.path} FIXED.mcap` to keep the complete chunks",
            path=str(self.path),
            offset=offset,
        )

    def _load_summary(self) -> str | None:
        """Read the summary section; return why it is unusable, or None."""
        footer_offset = self.size_bytes - 8 - _FOOTER.size
        if footer_offset < 8 or self._read(self.size_bytes - 8, 8) != _MAGIC:
            return "no footer (the writer did not finish)"
        opcode, length, summary_start, _, summary_crc = _FOOTER.unpack(
            self._read(footer_offset, _FOOTER.size)
        )
        if opcode != Opcode.FOOTER or length != 20:
            return "no footer record at the end"
        if summary_start == 0 or not 8 <= summary_start < footer_offset:
            return "no summary section"
        summary = self._read(summary_start, footer_offset - summary_start)
        crc = zlib.crc32(self._read(footer_offset, _FOOTER.size - 4), zlib.crc32(summary))
        if summary_crc and crc != summary_crc:
            return "the summary section fails its CRC"
        try:
            records = list(_iter_records(memoryview(summary)))
            for opcode, body in records:
                stream = ReadDataStream(io.BytesIO(body))
                if opcode == Opcode.SCHEMA:
                    schema = Schema.read(stream)
                    self.schemas[schema.id] = schema
                elif opcode == Opcode.CHANNEL:
                    channel = Channel.read(stream)
                    self.channels[channel.id] = channel
                elif opcode == Opcode.STATISTICS:
                    self._statistics = Statistics.read(stream)
                elif opcode == Opcode.CHUNK_INDEX:
                    self._chunks.append(self._chunk_from_index(ChunkIndex.read(stream)))
                elif opcode == Opcode.METADATA_INDEX:
                    self._read_metadata(MetadataIndex.read(stream))
        except Exception as exc:  # any parse failure: do not trust the index
            return f"the summary section cannot be parsed ({exc})"
        return None

    def _chunk_from_index(self, index: ChunkIndex) -> _Chunk:
        end = index.chunk_start_offset + index.chunk_length
        if index.chunk_start_offset < 8 or end > self.size_bytes:
            raise ValueError(f"chunk index points outside the file ({index.chunk_start_offset})")
        offsets = dict(index.message_index_offsets)
        return _Chunk(
            offset=index.chunk_start_offset,
            length=index.chunk_length,
            start_ns=index.message_start_time,
            end_ns=index.message_end_time,
            channel_ids=frozenset(offsets) if offsets else None,
            index_offsets=offsets,
        )

    def _read_metadata(self, index: MetadataIndex) -> None:
        raw = self._read(index.offset, index.length)
        opcode, _ = _RECORD.unpack_from(raw)
        if opcode != Opcode.METADATA:
            raise ValueError(f"metadata index points at opcode {opcode:#x}")
        record = Metadata.read(ReadDataStream(io.BytesIO(raw[_RECORD.size :])))
        self.metadata[record.name] = dict(record.metadata)

    def _scan(self) -> None:
        """Walk the data section record by record, keeping every complete, valid chunk."""
        self.schemas.clear()
        self.channels.clear()
        self._chunks.clear()
        self._statistics = None
        offset = 8
        while offset < self.size_bytes:
            head = self._read(offset, _RECORD.size)
            if len(head) < _RECORD.size:
                self.damage = self._corrupt(
                    offset, "the file ends inside a record header (truncated)"
                )
                return
            opcode, length = _RECORD.unpack(head)
            if offset + _RECORD.size + length > self.size_bytes:
                self.damage = self._corrupt(
                    offset,
                    f"record {opcode:#04x} declares {length} bytes but the file ends "
                    f"{self.size_bytes - offset - _RECORD.size} bytes later (truncated)",
                )
                return
            if opcode in (Opcode.DATA_END, Opcode.FOOTER):
                self.damage = self._corrupt(offset, "the summary section is missing or damaged")
                return
            if opcode == Opcode.CHUNK:
                chunk = _Chunk(offset, _RECORD.size + length, 0, 0)
                try:
                    records = self._chunk_records(chunk)
                except CorruptRecordingError as exc:
                    self.damage = exc
                    return
                times: dict[int, list[int]] = {}
                for channel_id, _, log_time_ns, _, _ in records:
                    times.setdefault(channel_id, []).append(log_time_ns)
                chunk.log_times = times
                chunk.channel_ids = frozenset(times)
                all_times = [t for ts in times.values() for t in ts]
                chunk.start_ns, chunk.end_ns = min(all_times, default=0), max(all_times, default=0)
                self._chunks.append(chunk)
            elif opcode in (Opcode.METADATA, Opcode.SCHEMA, Opcode.CHANNEL):
                body = self._read(offset + _RECORD.size, length)
                try:
                    if opcode == Opcode.METADATA:
                        record = Metadata.read(ReadDataStream(io.BytesIO(body)))
                        self.metadata[record.name] = dict(record.metadata)
                    else:
                        self._register(opcode, body)
                except Exception as exc:  # a damaged record ends the usable part here
                    self.damage = self._corrupt(offset, f"record {opcode:#04x} is bad ({exc})")
                    return
            offset += _RECORD.size + length
        self.damage = self._corrupt(offset, "the file ends without a summary or footer (truncated)")

    def _register(self, opcode: int, body: bytes | memoryview) -> None:
        stream = ReadDataStream(io.BytesIO(body))
        if opcode == Opcode.SCHEMA:
            schema = Schema.read(stream)
            self.schemas[schema.id] = schema
        else:
            channel = Channel.read(stream)
            self.channels[channel.id] = channel

    # -- chunks ----------------------------------------------------------------------------

    def _chunk_records(self, chunk: _Chunk) -> list[_Record]:
        """Read, decompress and check one chunk; its messages."""
        return self._parse(chunk, self._chunk_data(chunk, self._read(chunk.offset, chunk.length)))

    def _prefetched(self, chunks: list[_Chunk]) -> Iterator[tuple[_Chunk, list[_Record]]]:
        """Each chunk with its messages, in order; up to `PREFETCH_CHUNKS` are decompressed
        ahead in worker threads (zstd, lz4 and crc32 release the GIL)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(PREFETCH_CHUNKS, thread_name_prefix="recording")
        pending: deque[tuple[_Chunk, Future]] = deque()
        upcoming = iter(chunks)
        while True:
            while len(pending) < PREFETCH_CHUNKS and (chunk := next(upcoming, None)) is not None:
                raw = self._read(chunk.offset, chunk.length)
                pending.append((chunk, self._pool.submit(self._chunk_data, chunk, raw)))
            if not pending:
                return
            chunk, future = pending.popleft()
            yield chunk, self._parse(chunk, future.result())

    def _chunk_data(self, chunk: _Chunk, raw: bytes) -> bytes | memoryview:
        try:
            return self._decompress(chunk, memoryview(raw))
        except CorruptRecordingError:
            raise
        except Exception as exc:  # malformed content is damage here
            raise self._corrupt(chunk.offset, f"chunk cannot be read ({exc})") from exc

    def _parse(self, chunk: _Chunk, data: bytes | memoryview) -> list[_Record]:
        """The messages of a decompressed chunk, registering the schemas and channels in it."""
        out = []
        try:
            for opcode, body in _iter_records(memoryview(data)):
                if opcode == Opcode.MESSAGE:
                    channel_id, seq, log_ns, publish_ns = _MESSAGE.unpack_from(body)
                    if channel_id not in self.channels:
                        raise ValueError(f"message on unknown channel {channel_id}")
                    out.append((channel_id, seq, log_ns, publish_ns, body[_MESSAGE.size :]))
                elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL):
                    self._register(opcode, bytes(body))
        except Exception as exc:  # malformed content is damage here
            raise self._corrupt(chunk.offset, f"chunk cannot be parsed ({exc})") from exc
        self.chunks_read += 1
        return out

    def _decompress(self, chunk: _Chunk, raw: memoryview) -> bytes | memoryview:
        if len(raw) < chunk.length:
            raise self._corrupt(chunk.offset, "the chunk is cut short (truncated)")
        opcode, length = _RECORD.unpack_from(raw)
        if opcode != Opcode.CHUNK or _RECORD.size + length != chunk.length:
            raise self._corrupt(
                chunk.offset, f"expected a chunk record, found opcode {opcode:#04x}"
            )
        _, _, size, crc = _CHUNK.unpack_from(raw, _RECORD.size)
        pos = _RECORD.size + _CHUNK.size
        (name_len,) = _U32.unpack_from(raw, pos)
        compression = bytes(raw[pos + 4 : pos + 4 + name_len]).decode()
        pos += 4 + name_len
        (records_len,) = _U64.unpack_from(raw, pos)
        payload = raw[pos + 8 : pos + 8 + records_len]
        if len(payload) != records_len or size > MAX_CHUNK_BYTES:
            raise self._corrupt(
                chunk.offset, f"chunk sizes are inconsistent ({records_len}, {size})"
            )
        if compression == "zstd":
            if zstandard.frame_content_size(payload) not in (size, -1):
                raise self._corrupt(chunk.offset, "zstd frame size disagrees with the chunk")
            data: bytes | memoryview = zstandard.ZstdDecompressor().decompress(
                payload, max_output_size=size
            )
        elif compression == "lz4":
            if lz4.frame.get_frame_info(payload)["content_size"] not in (size, 0):
                raise self._corrupt(chunk.offset, "lz4 frame size disagrees with the chunk")
            data = lz4.frame.decompress(payload)
        elif compression == "":
            data = payload
        else:
            raise self._corrupt(chunk.offset, f"unsupported chunk compression {compression!r}")
        if len(data) != size:
            raise self._corrupt(chunk.offset, f"chunk holds {len(data)} bytes, declares {size}")
        if crc and zlib.crc32(data) != crc:
            raise self._corrupt(chunk.offset, "chunk content fails its CRC")
        return data

    def _topic_ids(self, topics: Iterable[str] | None) -> set[int] | None:
        if topics is None:
            return None
        wanted = {topics} if isinstance(topics, str) else set(topics)
        return {cid for cid, ch in self.channels.items() if ch.topic in wanted}

    # -- public API ------------------------------------------------------------------------

    @property
    def topics(self) -> dict[str, str]:
        """Recorded topic -> message type name."""
        return {ch.topic: self._type_name(ch) for ch in self.channels.values()}

    def _type_name(self, channel: Channel) -> str:
        schema = self.schemas.get(channel.schema_id)
        return schema.name if schema else channel.metadata.get("message_type", "?")

    @property
    def start_ns(self) -> int:
        return min((c.start_ns for c in self._chunks), default=0)

    @property
    def end_ns(self) -> int:
        return max((c.end_ns for c in self._chunks), default=0)

    def messages(
        self,
        topics: Iterable[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> Iterator[RecordedMessage]:
        """Messages in log-time order, on `topics` (all if None), with ``start_ns <= log time <
        end_ns``. Reads only the chunks that can hold them. Raises `CorruptRecordingError` after
        yielding every message of the complete chunks when the file is damaged (unless the
        window ends before the damage)."""
        wanted = self._topic_ids(topics)
        selected = [
            c
            for c in self._chunks
            if (start_ns is None or c.end_ns >= start_ns)
            and (end_ns is None or c.start_ns < end_ns)
            and (wanted is None or c.channel_ids is None or c.channel_ids & wanted)
        ]
        selected.sort(key=lambda c: (c.start_ns, c.offset))
        heap: list[tuple[int, int, int, RecordedMessage]] = []
        loaded = self._prefetched(selected)
        next_chunk = 0
        while True:
            while next_chunk < len(selected) and (
                not heap or selected[next_chunk].start_ns <= heap[0][0]
            ):
                try:
                    chunk, records = next(loaded)
                    batch = [
                        (log_ns, next_chunk, i, self._message(chunk, cid, seq, log_ns, pub, data))
                        for i, (cid, seq, log_ns, pub, data) in enumerate(records)
                        if (wanted is None or cid in wanted)
                        and (start_ns is None or log_ns >= start_ns)
                        and (end_ns is None or log_ns < end_ns)
                    ]
                except CorruptRecordingError:
                    while heap:  # everything before the damage first
                        yield heapq.heappop(heap)[3]
                    raise
                for item in batch:
                    heapq.heappush(heap, item)
                next_chunk += 1
            if not heap:
                break
            yield heapq.heappop(heap)[3]
        if self.damage is not None and (end_ns is None or end_ns > self.end_ns):
            raise self.damage

    def _message(
        self, chunk: _Chunk, cid: int, seq: int, log_ns: int, publish_ns: int, data: memoryview
    ) -> RecordedMessage:
        channel = self.channels[cid]
        if channel.message_encoding != MESSAGE_ENCODING:
            raise RecordingError(
                f"{self.path}: channel {channel.topic!r} has encoding "
                f"{channel.message_encoding!r}; this build reads {MESSAGE_ENCODING!r}"
            )
        try:
            frames = unframe_message(data)
        except DecodeError as exc:
            raise self._corrupt(chunk.offset, f"message on {channel.topic!r}: {exc}") from exc
        return RecordedMessage(
            channel.topic, log_ns, publish_ns, seq, [channel.topic.encode(), *frames]
        )

    def verify(self) -> None:
        """Read every chunk, raising `CorruptRecordingError` at the first damaged one."""
        for chunk in self._chunks:
            self._chunk_records(chunk)
        if self.damage is not None:
            raise self.damage

    def _log_times(self) -> dict[int, list[int]]:
        times: dict[int, list[int]] = {}
        for chunk in self._chunks:
            if chunk.log_times is None:
                chunk.log_times = self._index_times(chunk)
            for cid, ts in chunk.log_times.items():
                times.setdefault(cid, []).extend(ts)
        return times

    def _index_times(self, chunk: _Chunk) -> dict[int, list[int]]:
        """Log times per channel from the message indexes after `chunk`, else from the chunk."""
        out: dict[int, list[int]] = {}
        try:
            for cid, offset in chunk.index_offsets.items():
                opcode, length = _RECORD.unpack(self._read(offset, _RECORD.size))
                body = (
                    self._read(offset + _RECORD.size, length)
                    if opcode == Opcode.MESSAGE_INDEX
                    else b""
                )
                if len(body) < 6:
                    raise ValueError(f"no message index at offset {offset}")
                (size,) = _U32.unpack_from(body, 2)
                out[cid] = [t for t, _ in _INDEX_ENTRY.iter_unpack(body[6 : 6 + size])]
            if out:
                return out
        except (ValueError, struct.error):
            out = {}
        for cid, _, log_ns, _, _ in self._chunk_records(chunk):
            out.setdefault(cid, []).append(log_ns)
        return out

    def summary(self) -> RecordingSummary:
        """Topics, counts, rates, duration, gaps and size, from the index where there is one."""
        per_channel = self._log_times()
        topics: dict[str, TopicSummary] = {}
        for cid, times in sorted(per_channel.items(), key=lambda kv: self.channels[kv[0]].topic):
            channel = self.channels[cid]
            times.sort()
            topics[channel.topic] = _topic_summary(channel.topic, self._type_name(channel), times)
        sizes = self._chunk_sizes()
        count = sum(t.count for t in topics.values())
        return RecordingSummary(
            path=str(self.path),
            size_bytes=self.size_bytes,
            indexed=self.indexed,
            start_ns=min((t.first_ns for t in topics.values()), default=0),
            end_ns=max((t.last_ns for t in topics.values()), default=0),
            message_count=count,
            chunk_count=len(self._chunks),
            compressed_bytes=sizes[0],
            uncompressed_bytes=sizes[1],
            topics=topics,
            metadata=self.metadata,
            damage=str(self.damage) if self.damage else None,
        )

    def _chunk_sizes(self) -> tuple[int, int]:
        compressed = uncompressed = 0
        for chunk in self._chunks:
            raw = self._read(chunk.offset + _RECORD.size, _CHUNK.size)
            if len(raw) == _CHUNK.size:
                compressed += chunk.length
                uncompressed += _CHUNK.unpack(raw)[2]
        return compressed, uncompressed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._file.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _iter_records(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    pos = 0
    while pos < len(data):
        if pos + _RECORD.size > len(data):
            raise ValueError(f"record header cut short at {pos}")
        opcode, length = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if pos + length > len(data):
            raise ValueError(f"record {opcode:#04x} at {pos - _RECORD.size} overruns its block")
        yield opcode, data[pos : pos + length]
        pos += length


def _topic_summary(topic: str, message_type: str, times: list[int]) -> TopicSummary:
    intervals = [b - a for a, b in itertools.pairwise(times)]
    rate = (
        (len(times) - 1) / ((times[-1] - times[0]) / 1e9)
        if len(times) > 1 and times[-1] > times[0]
        else 0.0
    )
    gaps: list[Gap] = []
    # Simultaneous messages (one per sensor) are not intervals of the topic's rhythm.
    positive = [d for d in intervals if d > 0]
    if positive:
        threshold = GAP_FACTOR * pystats.median(positive)
        gaps = [Gap(topic, times[i], d) for i, d in enumerate(intervals) if d > threshold]
    svc = services.SERVICES.get(topic)
    return TopicSummary(
        topic=topic,
        message_type=message_type,
        count=len(times),
        first_ns=times[0] if times else 0,
        last_ns=times[-1] if times else 0,
        rate_hz=rate,
        nominal_rate_hz=svc.rate_hz if svc else None,
        gaps=tuple(gaps),
    )


def recover(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, int]:
    """Copy every message of every complete chunk of `src` into a new, valid, indexed `dst`.

    Returns messages recovered per topic. The damage found (if any) is logged, not raised.
    """
    if Path(src).resolve() == Path(dst).resolve():
        raise RecordingError(f"recover needs a new output file, not the damaged one ({src})")
    with RecordingReader(src) as reader:
        meta = dict(reader.metadata.get(METADATA_NAME, {}))
        meta["recovered_from"] = str(src)
        meta["recovered_damage"] = str(reader.damage) if reader.damage else ""
        with RecordingWriter(dst, chunk_size=chunk_size, metadata=meta) as writer:
            try:
                for m in reader.messages():
                    writer.write_frames(
                        m.topic, m.frames, m.log_time_ns, m.publish_time_ns, sequence=m.sequence
                    )
            except CorruptRecordingError as exc:
                log.warning("recovered %d messages; then: %s", sum(writer.counts.values()), exc)
            return dict(writer.counts)
