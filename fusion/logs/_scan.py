"""The damage scanner: what can still be read of a recording whose index cannot be trusted.

A recorder killed with SIGKILL, a truncated copy or a flipped byte leaves a file that
`mcap`'s reader cannot use. `ScannedRecording` walks the data section record by record instead
and keeps every complete, valid chunk before the first damage; `messages` yields their messages
in log-time order and then raises the damage as a `CorruptRecordingError` naming the file and
byte offset. `summary_problem` is the cheap check `RecordingReader` makes on opening: whether the
footer and the summary section are there and pass their CRC.
"""

from __future__ import annotations

import heapq
import io
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lz4.frame
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, Metadata, Schema

from fusion.errors import CorruptRecordingError, DecodeError, RecordingError
from fusion.logs.framing import MESSAGE_ENCODING, RecordedMessage, unframe_message

#: Largest chunk (uncompressed) the scanner accepts; bounds what a damaged length can allocate.
MAX_CHUNK_BYTES = 1 << 30
#: Chunks decompressed ahead of the one being read (in worker threads).
PREFETCH_CHUNKS = 4

MAGIC = b"\x89MCAP0\r\n"
_RECORD = struct.Struct("<BQ")  # opcode, length of the body that follows
_CHUNK = struct.Struct("<QQQI")  # message start, end, uncompressed size, uncompressed crc
_MESSAGE = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
_FOOTER = struct.Struct("<BQQQI")  # opcode, length (20), summary start, summary offset start, crc
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

#: A message in a chunk: channel id, sequence, log time, publish time, data.
_Record = tuple[int, int, int, int, memoryview]
#: Reads up to `length` bytes at `offset` of the file.
Read = Callable[[int, int], bytes]


def corrupt(path: Path, offset: int, what: str) -> CorruptRecordingError:
    return CorruptRecordingError(
        f"{path} is damaged at byte offset {offset}: {what}; "
        f"run `fusion recover {path} FIXED.mcap` to keep the complete chunks",
        path=str(path),
        offset=offset,
    )


def summary_problem(read: Read, size_bytes: int) -> str | None:
    """Why the file's footer and summary section cannot be trusted, or None when they can."""
    footer_offset = size_bytes - 8 - _FOOTER.size
    if footer_offset < 8 or read(size_bytes - 8, 8) != MAGIC:
        return "no footer (the writer did not finish)"
    opcode, length, summary_start, _, summary_crc = _FOOTER.unpack(
        read(footer_offset, _FOOTER.size)
    )
    if opcode != Opcode.FOOTER or length != 20:
        return "no footer record at the end"
    if summary_start == 0 or not 8 <= summary_start < footer_offset:
        return "no summary section"
    summary = read(summary_start, footer_offset - summary_start)
    crc = zlib.crc32(read(footer_offset, _FOOTER.size - 4), zlib.crc32(summary))
    if summary_crc and crc != summary_crc:
        return "the summary section fails its CRC"
    return None


@dataclass
class _Chunk:
    offset: int  # of the chunk record's opcode
    length: int  # of the whole record
    start_ns: int = 0
    end_ns: int = 0
    #: channel id -> log times of its messages
    log_times: dict[int, list[int]] | None = None


class ScannedRecording:
    """The complete chunks of a damaged recording, found by walking its data section."""

    def __init__(self, path: Path, read: Read, size_bytes: int) -> None:
        self.path = path
        self._read = read
        self.size_bytes = size_bytes
        self.schemas: dict[int, Schema] = {}
        self.channels: dict[int, Channel] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.chunks: list[_Chunk] = []
        self.damage: CorruptRecordingError | None = None
        #: chunks decompressed so far (a measure of how much a query had to read)
        self.chunks_read = 0
        self._pool: ThreadPoolExecutor | None = None
        self._scan()

    def _corrupt(self, offset: int, what: str) -> CorruptRecordingError:
        return corrupt(self.path, offset, what)

    def _scan(self) -> None:
        """Walk the data section record by record, keeping every complete, valid chunk."""
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
                chunk = _Chunk(offset, _RECORD.size + length)
                try:
                    records = self._chunk_records(chunk)
                except CorruptRecordingError as exc:
                    self.damage = exc
                    return
                times: dict[int, list[int]] = {}
                for channel_id, _, log_time_ns, _, _ in records:
                    times.setdefault(channel_id, []).append(log_time_ns)
                chunk.log_times = times
                all_times = [t for ts in times.values() for t in ts]
                chunk.start_ns, chunk.end_ns = min(all_times, default=0), max(all_times, default=0)
                self.chunks.append(chunk)
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

    # -- reading ---------------------------------------------------------------------------

    @property
    def start_ns(self) -> int:
        return min((c.start_ns for c in self.chunks), default=0)

    @property
    def end_ns(self) -> int:
        return max((c.end_ns for c in self.chunks), default=0)

    def messages(
        self, topics: Iterable[str] | None, start_ns: int | None, end_ns: int | None
    ) -> Iterator[RecordedMessage]:
        """Messages of the complete chunks in log-time order (ties: chunk offset, then position
        in the chunk, as `mcap`'s reader orders them), filtered by topic and ``start_ns <= log
        time < end_ns``; then the damage, unless the window ends before it."""
        wanted = None if topics is None else {topics} if isinstance(topics, str) else set(topics)
        ids = (
            None if wanted is None else {c for c, ch in self.channels.items() if ch.topic in wanted}
        )
        selected = sorted(
            (
                c
                for c in self.chunks
                if (start_ns is None or c.end_ns >= start_ns)
                and (end_ns is None or c.start_ns < end_ns)
                and (ids is None or set(c.log_times or ()) & ids)
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
                try:
                    chunk, records = next(loaded)
                    batch = [
                        (log_ns, chunk.offset, i, self._message(chunk, cid, seq, log_ns, pub, data))
                        for i, (cid, seq, log_ns, pub, data) in enumerate(records)
                        if (ids is None or cid in ids)
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

    def log_times(self) -> dict[int, list[int]]:
        """Channel id -> log times of its messages in the complete chunks."""
        times: dict[int, list[int]] = {}
        for chunk in self.chunks:
            for cid, ts in (chunk.log_times or {}).items():
                times.setdefault(cid, []).extend(ts)
        return times

    def chunk_sizes(self) -> tuple[int, int]:
        """(bytes of the complete chunk records, bytes they hold uncompressed)."""
        compressed = uncompressed = 0
        for chunk in self.chunks:
            raw = self._read(chunk.offset + _RECORD.size, _CHUNK.size)
            if len(raw) == _CHUNK.size:
                compressed += chunk.length
                uncompressed += _CHUNK.unpack(raw)[2]
        return compressed, uncompressed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


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
