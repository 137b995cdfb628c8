"""Reading a recording's chunks without trusting them: bounded, and past any damage.

Every byte of a recording may be hostile or damaged: a length that points past the end, a chunk
declaring gigabytes that a few kilobytes of zstd would fill, a sparse hole of terabytes, an index
that names chunks that are not there. `ChunkedRecording` reads chunks so that none of that can
cost more than the file is worth:

- a chunk record is read whole only when it is at most `MAX_CHUNK_RECORD_BYTES`, declares at
  most `MAX_CHUNK_BYTES` uncompressed, and its compressed stream agrees with that size; it is
  decompressed into at most that many bytes, its records are parsed before its CRC is computed
  (garbage fails fast), and the messages of the whole file are bounded by its size
  (`message_budget`);
- its chunks come either from a trusted index (`ChunkedRecording.from_index`, made by
  `fusion.logs.reader` after checking the summary against the file) or from walking the data
  section record by record (`ChunkedRecording.walk`), for a file whose summary is missing,
  damaged or does not check;
- damage never ends the reading: a chunk that fails is skipped; when walking, the next chunk
  record is searched for after the damage (holes of sparse files are skipped with
  ``SEEK_DATA``, then a pattern match on chunk headers), so every intact chunk is found wherever
  the damage is. `messages` yields the messages of every intact chunk in log-time order, then
  raises the first damage as a `CorruptRecordingError` naming the file, the byte offset and how
  many places were damaged.

`summary_problem` is the cheap check made on opening: whether the footer and a summary section of
at most `MAX_SUMMARY_BYTES` are there and pass their CRC.
"""

from __future__ import annotations

import heapq
import io
import os
import re
import struct
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import lz4.frame
import numpy as np
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, Metadata, Schema

from fusion.errors import CorruptRecordingError, DecodeError
from fusion.logs.framing import (
    MESSAGE_ENCODING,
    RecordedMessage,
    ViewMessage,
    ViewSchema,
    unframe_message,
)

#: Largest chunk accepted, uncompressed: the writer's largest chunk size (32 MiB) plus the
#: largest message (a 64 MiB buffer and its header), with room to spare.
MAX_CHUNK_BYTES = 128 << 20
#: Largest chunk record accepted as stored (compression can expand incompressible data a little).
MAX_CHUNK_RECORD_BYTES = MAX_CHUNK_BYTES + (1 << 20)
#: Largest summary section trusted (a day of driving indexes to a few tens of MiB).
MAX_SUMMARY_BYTES = 64 << 20
#: Largest schema, channel or metadata record read outside a chunk.
MAX_SMALL_RECORD_BYTES = 1 << 20
#: Messages a file may hold: at least this many, else one per this many bytes of file.
MIN_MESSAGE_BUDGET = 1 << 19
BYTES_PER_MESSAGE = 8
#: Uncompressed bytes decompressed ahead of the chunk being read (in worker threads), at most.
PREFETCH_BYTES = 256 << 20
PREFETCH_CHUNKS = 4
#: Damaged places remembered in detail (all are counted).
MAX_DAMAGES_KEPT = 64
#: Schemas and channels a recording may define, in all; and its metadata records.
MAX_DEFINITIONS = 4096
MAX_METADATA_RECORDS = 1024
#: Bytes searched at a time for the next chunk record after damage.
RESYNC_BLOCK_BYTES = 4 << 20

MAGIC = b"\x89MCAP0\r\n"
COMPRESSIONS = ("", "zstd", "lz4")
RECORD = struct.Struct("<BQ")  # opcode, length of the body that follows
_CHUNK = struct.Struct("<QQQI")  # message start, end, uncompressed size, uncompressed crc
_MESSAGE = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
FOOTER = struct.Struct("<BQQQI")  # opcode, length (20), summary start, summary offset start, crc
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_KNOWN_OPCODES = frozenset(int(op) for op in Opcode)
#: A chunk record's head: opcode, length, start, end, size, crc, then its compression's name.
_CHUNK_HEAD = re.compile(
    rb"\x06.{36}(?:\x00\x00\x00\x00|\x04\x00\x00\x00zstd|\x03\x00\x00\x00lz4)", re.DOTALL
)

#: A message in a chunk: channel id, sequence, log time, publish time, data.
_Record = tuple[int, int, int, int, memoryview]


def corrupt(path: Path, offset: int, what: str) -> CorruptRecordingError:
    return CorruptRecordingError(
        f"{path} is damaged at byte offset {offset}: {what}; "
        f"run `fusion recover {path} FIXED.mcap` to keep every intact chunk",
        path=str(path),
        offset=offset,
    )


class _Damaged(Exception):  # noqa: N818 - internal signal, never leaves this module
    """A damaged place found while reading: where, and what is wrong there."""

    def __init__(self, offset: int, what: str) -> None:
        super().__init__(what)
        self.offset = offset
        self.what = what


class RecordingFile:
    """Bounded reads of one open file: never past its end, holes skipped."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self._file = file
        self.size_bytes = os.fstat(file.fileno()).st_size

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (a damaged length never reads past the end)."""
        length = max(0, min(length, self.size_bytes - offset))
        if length == 0 or offset < 0:
            return b""
        return os.pread(self._file.fileno(), length, offset)

    def next_data(self, offset: int) -> int:
        """The first offset at or after `offset` that is not in a hole (the size when none)."""
        try:
            return os.lseek(self._file.fileno(), offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole after `offset`; or no SEEK_DATA here
            return self.size_bytes if offset < self.size_bytes else offset

    def close(self) -> None:
        self._file.close()


def summary_problem(file: RecordingFile) -> str | None:
    """Why the file's footer and summary section cannot be trusted, or None when they can."""
    size = file.size_bytes
    footer_offset = size - 8 - FOOTER.size
    if footer_offset < 8 or file.read(size - 8, 8) != MAGIC:
        return "no footer (the writer did not finish)"
    opcode, length, summary_start, _, summary_crc = FOOTER.unpack(
        file.read(footer_offset, FOOTER.size)
    )
    if opcode != Opcode.FOOTER or length != 20:
        return "no footer record at the end"
    if summary_start == 0 or not 8 <= summary_start < footer_offset:
        return "no summary section"
    if footer_offset - summary_start > MAX_SUMMARY_BYTES:
        return f"the summary section is over {MAX_SUMMARY_BYTES} bytes"
    summary = file.read(summary_start, footer_offset - summary_start)
    crc = zlib.crc32(file.read(footer_offset, FOOTER.size - 4), zlib.crc32(summary))
    if summary_crc and crc != summary_crc:
        return "the summary section fails its CRC"
    return None


def iter_records(data: memoryview, allowed: frozenset[int] = _KNOWN_OPCODES):
    """(opcode, body) of each record in `data`; ValueError for one cut short or not allowed."""
    pos = 0
    while pos < len(data):
        if pos + RECORD.size > len(data):
            raise ValueError(f"record header cut short at {pos}")
        opcode, length = RECORD.unpack_from(data, pos)
        if opcode not in allowed:
            raise ValueError(f"record of opcode {opcode:#04x} at {pos} is not allowed here")
        pos += RECORD.size
        if length > len(data) - pos:
            raise ValueError(f"record {opcode:#04x} at {pos - RECORD.size} overruns its block")
        yield opcode, data[pos : pos + length]
        pos += length


def read_schema_or_channel(opcode: int, body: bytes | memoryview) -> Schema | Channel:
    stream = ReadDataStream(io.BytesIO(bytes(body)))
    return Schema.read(stream) if opcode == Opcode.SCHEMA else Channel.read(stream)


def read_metadata(body: bytes | memoryview) -> Metadata:
    return Metadata.read(ReadDataStream(io.BytesIO(bytes(body))))


@dataclass(slots=True)
class Chunk:
    """One chunk record: where it is and what it holds, as far as known before reading it."""

    offset: int  # of the chunk record's opcode
    length: int  # of the whole record
    start_ns: int = 0
    end_ns: int = 0
    uncompressed_bytes: int = 0
    #: the channels it has messages on (None: not known until it is read)
    channel_ids: frozenset[int] | None = None
    #: channel id -> log times of its messages, once known
    log_times: dict[int, np.ndarray] | None = None
    #: channel id -> offset of its message index record, and the bytes of those records after
    #: the chunk (from a summary)
    message_indexes: dict[int, int] = field(default_factory=dict)
    index_bytes: int = 0
    #: the compression its index names (from a summary)
    compression: str = ""
    #: None until it has been read; then whether it was intact
    intact: bool | None = field(default=None, compare=False)


class ChunkedRecording:
    """The chunks of a recording, read without trusting them; see the module docstring."""

    def __init__(
        self,
        file: RecordingFile,
        chunks: list[Chunk],
        *,
        schemas: dict[int, Schema] | None = None,
        channels: dict[int, Channel] | None = None,
        metadata: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.file = file
        self.path = file.path
        self.chunks = chunks
        self.schemas: dict[int, Schema] = dict(schemas or {})
        self.channels: dict[int, Channel] = dict(channels or {})
        self.metadata: dict[str, dict[str, str]] = dict(metadata or {})
        self.damages: list[CorruptRecordingError] = []
        self.damage_count = 0
        #: chunks decompressed so far (a measure of how much a query had to read)
        self.chunks_read = 0
        self.message_budget = max(MIN_MESSAGE_BUDGET, file.size_bytes // BYTES_PER_MESSAGE)
        self._pool: ThreadPoolExecutor | None = None
        self._view_schemas: dict[int, tuple[Channel, ViewSchema]] = {}

    @classmethod
    def from_index(
        cls,
        file: RecordingFile,
        chunks: list[Chunk],
        schemas: dict[int, Schema],
        channels: dict[int, Channel],
        metadata: dict[str, dict[str, str]],
    ) -> ChunkedRecording:
        """The chunks a checked summary lists (`fusion.logs.reader` checks it)."""
        return cls(file, chunks, schemas=schemas, channels=channels, metadata=metadata)

    @classmethod
    def walk(
        cls,
        file: RecordingFile,
        *,
        schemas: dict[int, Schema] | None = None,
        channels: dict[int, Channel] | None = None,
        summary_offset: int | None = None,
        index_problem: str = "",
    ) -> ChunkedRecording:
        """Find the chunks by walking the data section; every chunk is read (and its messages'
        log times kept) on the way. `schemas` and `channels` come from a summary section that
        is there (at `summary_offset`) but whose index does not check (`index_problem`): they
        name channels whose own records were in a damaged chunk, and the mismatch is damage."""
        found = cls(file, [], schemas=schemas, channels=channels)
        found._walk(summary_offset, index_problem)
        return found

    # -- damage --------------------------------------------------------------------------------

    def _damaged(self, offset: int, what: str) -> None:
        self.damage_count += 1
        if len(self.damages) < MAX_DAMAGES_KEPT:
            self.damages.append(corrupt(self.path, offset, what))

    @property
    def damage(self) -> CorruptRecordingError | None:
        """The first damage found so far, saying how many places were damaged in all."""
        if not self.damages:
            return None
        first = self.damages[0]
        if self.damage_count == 1:
            return first
        return CorruptRecordingError(
            f"{first} ({self.damage_count} damaged places in all; every intact chunk is read)",
            path=first.path,
            offset=first.offset,
        )

    # -- walking -------------------------------------------------------------------------------

    def _walk(self, summary_offset: int | None, index_problem: str) -> None:
        """Walk the data section record by record, reading every chunk; resynchronise on the
        next chunk record after anything damaged."""
        size = self.file.size_bytes if summary_offset is None else summary_offset
        offset = 8
        while offset < size:
            head = self.file.read(offset, RECORD.size)
            if len(head) < RECORD.size:
                self._damaged(offset, "the file ends inside a record header (truncated)")
                return
            opcode, length = RECORD.unpack(head)
            end = offset + RECORD.size + length
            if opcode not in _KNOWN_OPCODES:
                self._damaged(offset, f"no record starts here (opcode {opcode:#04x})")
                offset = self._resync(offset + 1)
                continue
            if end > size:
                self._damaged(
                    offset,
                    f"record {opcode:#04x} declares {length} bytes but the file ends "
                    f"{size - offset - RECORD.size} bytes later (truncated)",
                )
                offset = self._resync(offset + 1)
                continue
            if opcode in (Opcode.DATA_END, Opcode.FOOTER):
                self._data_ended(offset, summary_offset, index_problem)
                return
            if opcode == Opcode.CHUNK:
                chunk = Chunk(offset, RECORD.size + length)
                if self.budget_exhausted or self._read_chunk(chunk) is None:
                    if self.budget_exhausted:
                        return
                    offset = self._resync(offset + 1)
                    continue
                self.chunks.append(chunk)
            elif opcode in (Opcode.METADATA, Opcode.SCHEMA, Opcode.CHANNEL):
                try:
                    if length > MAX_SMALL_RECORD_BYTES:
                        raise ValueError(f"{length} bytes, limit {MAX_SMALL_RECORD_BYTES}")
                    body = self.file.read(offset + RECORD.size, length)
                    if opcode == Opcode.METADATA:
                        record = read_metadata(body)
                        if record.name not in self.metadata and (
                            len(self.metadata) >= MAX_METADATA_RECORDS
                        ):
                            raise ValueError(f"more than {MAX_METADATA_RECORDS} metadata records")
                        self.metadata[record.name] = dict(record.metadata)
                    else:
                        self._register(read_schema_or_channel(opcode, body))
                except Exception as exc:  # a damaged record: look for the next chunk
                    self._damaged(offset, f"record {opcode:#04x} is bad ({exc})")
                    offset = self._resync(offset + 1)
                    continue
            offset = end
        self._data_ended(offset, summary_offset, index_problem)

    def _data_ended(self, offset: int, summary_offset: int | None, index_problem: str) -> None:
        """The walk reached the end of the data section at `offset`: what is wrong there."""
        if summary_offset is not None:
            self._damaged(summary_offset, f"the index disagrees with the file: {index_problem}")
        elif offset < self.file.size_bytes:
            self._damaged(offset, "the summary section is missing or damaged")
        else:
            self._damaged(offset, "the file ends without a summary or footer (truncated)")

    def _resync(self, offset: int) -> int:
        """The offset of the next plausible chunk record at or after `offset` (the file size
        when there is none); holes are skipped without reading them."""
        size = self.file.size_bytes
        overlap = _CHUNK_HEAD.pattern.count(b".") + 64
        while offset < size:
            offset = self.file.next_data(offset)
            if offset >= size:
                break
            block = self.file.read(offset, RESYNC_BLOCK_BYTES + overlap)
            for match in _CHUNK_HEAD.finditer(block):
                if match.start() >= RESYNC_BLOCK_BYTES:
                    break
                if self._plausible_chunk(offset + match.start()):
                    return offset + match.start()
            offset += RESYNC_BLOCK_BYTES
        return size

    def _plausible_chunk(self, offset: int) -> bool:
        head = self.file.read(offset, RECORD.size + _CHUNK.size + 8)
        if len(head) < RECORD.size + _CHUNK.size + 8:
            return False
        _, length = RECORD.unpack_from(head)
        start_ns, end_ns, size, _ = _CHUNK.unpack_from(head, RECORD.size)
        (name_len,) = _U32.unpack_from(head, RECORD.size + _CHUNK.size)
        records_at = RECORD.size + _CHUNK.size + 4 + name_len
        tail = self.file.read(offset + records_at, 8)
        return (
            len(tail) == 8
            and start_ns <= end_ns
            and size <= MAX_CHUNK_BYTES
            and length <= MAX_CHUNK_RECORD_BYTES
            and offset + RECORD.size + length <= self.file.size_bytes
            and _U64.unpack(tail)[0] == length - (records_at - RECORD.size) - 8
        )

    def _register(self, record: Schema | Channel) -> None:
        table: dict = self.schemas if isinstance(record, Schema) else self.channels
        if record.id not in table and len(self.schemas) + len(self.channels) >= MAX_DEFINITIONS:
            raise ValueError(f"more than {MAX_DEFINITIONS} schema and channel records")
        table[record.id] = record

    # -- chunks --------------------------------------------------------------------------------

    @property
    def budget_exhausted(self) -> bool:
        return self.message_budget < 0

    def _read_chunk(self, chunk: Chunk) -> list[_Record] | None:
        """Read, decompress, parse and check one chunk found by walking: its messages, or None
        (damaged, and counted)."""
        try:
            data = self._decompressed(chunk)
            chunk.uncompressed_bytes = len(data)
            return self._parse(chunk, data)
        except _Damaged as exc:
            self._damaged(exc.offset, exc.what)
            chunk.intact = False
            return None

    def _decompressed(self, chunk: Chunk) -> bytes | memoryview:
        """The chunk's records, decompressed into at most the size it declares (<= the limit),
        or `_Damaged`. Runs in worker threads: it changes nothing."""
        if chunk.length > MAX_CHUNK_RECORD_BYTES:
            raise _Damaged(chunk.offset, f"chunk record of {chunk.length} bytes is over the limit")
        raw = memoryview(self.file.read(chunk.offset, chunk.length))
        try:
            return self._decompress(chunk, raw)
        except _Damaged:
            raise
        except Exception as exc:  # malformed content is damage here
            raise _Damaged(chunk.offset, f"chunk cannot be read ({exc})") from exc

    def _decompress(self, chunk: Chunk, raw: memoryview) -> bytes | memoryview:
        if len(raw) < chunk.length:
            raise _Damaged(chunk.offset, "the chunk is cut short (truncated)")
        opcode, length = RECORD.unpack_from(raw)
        if opcode != Opcode.CHUNK or RECORD.size + length != chunk.length:
            raise _Damaged(chunk.offset, f"expected a chunk, found opcode {opcode:#04x}")
        _, _, size, _ = _CHUNK.unpack_from(raw, RECORD.size)
        pos = RECORD.size + _CHUNK.size
        (name_len,) = _U32.unpack_from(raw, pos)
        compression = bytes(raw[pos + 4 : pos + 4 + min(name_len, 16)]).decode(errors="replace")
        pos += 4 + name_len
        (records_len,) = _U64.unpack_from(raw, pos)
        payload = raw[pos + 8 : pos + 8 + records_len]
        if len(payload) != records_len or pos + 8 + records_len != len(raw):
            raise _Damaged(chunk.offset, "chunk sizes are inconsistent")
        if size > MAX_CHUNK_BYTES:
            raise _Damaged(chunk.offset, f"chunk declares {size} bytes, limit {MAX_CHUNK_BYTES}")
        if chunk.uncompressed_bytes and size != chunk.uncompressed_bytes:
            raise _Damaged(chunk.offset, "chunk size disagrees with its index")
        if compression not in COMPRESSIONS:
            raise _Damaged(chunk.offset, f"unsupported compression {compression!r}")
        if compression == "zstd":
            if zstandard.frame_content_size(payload) not in (size, -1):
                raise _Damaged(chunk.offset, "zstd frame size disagrees with the chunk")
            data: bytes | memoryview = zstandard.ZstdDecompressor().decompress(
                payload, max_output_size=size
            )
        elif compression == "lz4":
            if lz4.frame.get_frame_info(payload)["content_size"] not in (size, 0):
                raise _Damaged(chunk.offset, "lz4 frame size disagrees with the chunk")
            decompressor = lz4.frame.LZ4FrameDecompressor()
            data = decompressor.decompress(payload, max_length=size)
            if not decompressor.eof:
                raise _Damaged(chunk.offset, "lz4 data is longer than the chunk says")
        else:
            data = payload
        if len(data) != size:
            raise _Damaged(chunk.offset, f"chunk holds {len(data)} bytes, not {size}")
        return data

    def _parse(self, chunk: Chunk, data: bytes | memoryview) -> list[_Record]:
        """The messages of a decompressed chunk (its schemas and channels are registered), then
        its CRC checked: garbage fails on its first record, before the CRC costs anything."""
        out: list[_Record] = []
        first_read = chunk.log_times is None
        try:
            view = memoryview(data)
            allowed = frozenset((Opcode.MESSAGE, Opcode.SCHEMA, Opcode.CHANNEL))
            for opcode, body in iter_records(view, allowed):
                if opcode == Opcode.MESSAGE:
                    channel_id, seq, log_ns, publish_ns = _MESSAGE.unpack_from(body)
                    out.append((channel_id, seq, log_ns, publish_ns, body[_MESSAGE.size :]))
                    if first_read and len(out) > self.message_budget:
                        self.message_budget = -1
                        raise ValueError(
                            f"more messages than a file of {self.file.size_bytes} bytes can "
                            "hold; not read further"
                        )
                else:
                    self._register(read_schema_or_channel(opcode, body))
        except Exception as exc:  # malformed content is damage here
            raise _Damaged(chunk.offset, f"chunk cannot be parsed ({exc})") from exc
        crc = _CHUNK.unpack_from(self.file.read(chunk.offset + RECORD.size, _CHUNK.size))[3]
        if crc and zlib.crc32(data) != crc:
            raise _Damaged(chunk.offset, "chunk content fails its CRC")
        unknown = {cid for cid, *_ in out if cid not in self.channels}
        if unknown:
            self._damaged(
                chunk.offset,
                f"{sum(1 for cid, *_ in out if cid in unknown)} messages on channels "
                f"{sorted(unknown)[:5]} whose channel record was lost; skipped",
            )
            out = [rec for rec in out if rec[0] not in unknown]
        if first_read:
            self.message_budget -= len(out)
            times: dict[int, list[int]] = {}
            for channel_id, _, log_ns, _, _ in out:
                times.setdefault(channel_id, []).append(log_ns)
            chunk.log_times = {cid: np.asarray(ts, np.int64) for cid, ts in times.items()}
            chunk.channel_ids = frozenset(times)
            if out:
                chunk.start_ns = min(int(ts.min()) for ts in chunk.log_times.values())
                chunk.end_ns = max(int(ts.max()) for ts in chunk.log_times.values())
        chunk.intact = True
        self.chunks_read += 1
        return out

    def _prefetched(self, chunks: list[Chunk]) -> Iterator[tuple[Chunk, list[_Record] | None]]:
        """Each chunk with its messages (None when damaged), in order; chunks are decompressed
        ahead in worker threads (zstd, lz4 and crc32 release the GIL), at most `PREFETCH_CHUNKS`
        and `PREFETCH_BYTES` at a time."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(PREFETCH_CHUNKS, thread_name_prefix="recording")
        pending: deque[tuple[Chunk, Future]] = deque()
        upcoming = deque(chunks)
        while upcoming or pending:
            in_flight = sum(c.uncompressed_bytes for c, _ in pending)
            while upcoming and (
                not pending
                or (
                    len(pending) < PREFETCH_CHUNKS
                    and in_flight + upcoming[0].uncompressed_bytes <= PREFETCH_BYTES
                )
            ):
                chunk = upcoming.popleft()
                pending.append((chunk, self._pool.submit(self._decompressed, chunk)))
                in_flight += chunk.uncompressed_bytes
            chunk, future = pending.popleft()
            try:
                records = self._parse(chunk, future.result())
            except _Damaged as exc:
                if chunk.intact is not False:  # damage not yet counted for this chunk
                    self._damaged(exc.offset, exc.what)
                chunk.intact = False
                records = None
            yield chunk, records

    # -- reading -------------------------------------------------------------------------------

    @property
    def start_ns(self) -> int:
        return min((c.start_ns for c in self.chunks if c.intact is not False), default=0)

    @property
    def end_ns(self) -> int:
        return max((c.end_ns for c in self.chunks if c.intact is not False), default=0)

    def is_view(self, channel: Channel) -> bool:
        """Whether `channel` is a view channel (another encoding than ours: never replayed)."""
        return channel.message_encoding != MESSAGE_ENCODING

    def view_schema(self, channel: Channel) -> ViewSchema:
        """The schema of a view channel (empty for a schemaless one), made once per channel."""
        known = self._view_schemas.get(channel.id)
        if known is None or known[0] is not channel:
            schema = self.schemas.get(channel.schema_id)
            view = ViewSchema(
                schema.name if schema else "",
                schema.encoding if schema else "",
                bytes(schema.data) if schema else b"",
                channel.message_encoding,
            )
            known = self._view_schemas[channel.id] = (channel, view)
        return known[1]

    def messages(
        self,
        topics: Iterable[str] | None,
        start_ns: int | None,
        end_ns: int | None,
        views: bool = False,
    ) -> Iterator[RecordedMessage | ViewMessage]:
        """Messages of the intact chunks in log-time order (ties: chunk offset, then position
        in the chunk, as `mcap`'s reader orders them), filtered by topic and ``start_ns <= log
        time < end_ns``; then the damage found, if any (unless the window ends before it).
        Messages of view channels are left out unless `views` (then as `ViewMessage`s)."""
        wanted = None if topics is None else {topics} if isinstance(topics, str) else set(topics)
        ids = (
            None if wanted is None else {c for c, ch in self.channels.items() if ch.topic in wanted}
        )
        selected = sorted(
            (
                c
                for c in self.chunks
                if c.intact is not False
                and (start_ns is None or c.end_ns >= start_ns)
                and (end_ns is None or c.start_ns < end_ns)
                and (ids is None or c.channel_ids is None or c.channel_ids & ids)
            ),
            key=lambda c: (c.start_ns, c.offset),
        )
        heap: list[tuple[int, int, int, RecordedMessage]] = []
        loaded = self._prefetched(selected)
        next_chunk = 0
        while True:
            while next_chunk < len(selected) and (
                not heap or selected[next_chunk].start_ns <= heap[0][0]
            ):
                chunk, records = next(loaded)
                next_chunk += 1
                for i, (cid, seq, log_ns, pub, data) in enumerate(records or ()):
                    if (
                        (ids is None or cid in ids)
                        and (start_ns is None or log_ns >= start_ns)
                        and (end_ns is None or log_ns < end_ns)
                    ):
                        message = self._message(chunk, cid, seq, log_ns, pub, data, views)
                        if message is not None:
                            heapq.heappush(heap, (log_ns, chunk.offset, i, message))
            if not heap:
                break
            yield heapq.heappop(heap)[3]
        damage = self.damage
        if damage is not None and (end_ns is None or end_ns > damage_start_ns(self, damage)):
            raise damage

    def _message(
        self,
        chunk: Chunk,
        cid: int,
        seq: int,
        log_ns: int,
        publish_ns: int,
        data: memoryview,
        views: bool,
    ) -> RecordedMessage | ViewMessage | None:
        channel = self.channels[cid]
        if self.is_view(channel):
            if not views:
                return None
            schema = self.view_schema(channel)
            return ViewMessage(channel.topic, log_ns, publish_ns, seq, schema, data)
        try:
            frames = unframe_message(data)
        except DecodeError as exc:
            self._damaged(chunk.offset, f"a message on {channel.topic!r:.80} is bad: {exc}")
            return None
        return RecordedMessage(
            channel.topic, log_ns, publish_ns, seq, [channel.topic.encode(), *frames]
        )

    def log_times(self) -> dict[int, np.ndarray]:
        """Channel id -> log times of its messages in the intact chunks (sorted); chunks whose
        log times are not known yet are read."""
        per_channel: dict[int, list[np.ndarray]] = {}
        unread = [c for c in self.chunks if c.log_times is None and c.intact is not False]
        for _ in self._prefetched(unread):
            pass
        for chunk in self.chunks:
            if chunk.intact is False or chunk.log_times is None:
                continue
            for cid, ts in chunk.log_times.items():
                per_channel.setdefault(cid, []).append(ts)
        return {cid: np.sort(np.concatenate(parts)) for cid, parts in per_channel.items()}

    def chunk_sizes(self) -> tuple[int, int]:
        """(bytes of the intact chunk records, bytes they hold uncompressed)."""
        intact = [c for c in self.chunks if c.intact is not False]
        return sum(c.length for c in intact), sum(c.uncompressed_bytes for c in intact)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def damage_start_ns(recording: ChunkedRecording, damage: CorruptRecordingError) -> int:
    """The log time a window must reach to meet `damage`: the end of the last intact chunk
    stored before the damaged place (messages after it may have been there)."""
    before = [c.end_ns for c in recording.chunks if c.offset < damage.offset and c.intact]
    return max(before, default=0)
