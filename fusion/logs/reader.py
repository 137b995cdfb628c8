"""Reading recordings: messages filtered by topic and time, summaries, and damaged files.

`RecordingReader` opens a file and decides how far its own index can be trusted. The summary
section (at most `MAX_SUMMARY_BYTES`, CRC-checked) is parsed from memory, and every chunk index is
checked against the file: inside the data section, within the chunk limits, pointing at a chunk
record that says the same sizes and compression, naming known channels. A file that passes is
read through its index, so a topic filter and a time window read only the chunks they need, and
`summary` reads the message indexes only, never a chunk. A file whose footer or summary is
missing, damaged or does not check (a recorder killed with SIGKILL, a truncated copy, a hostile
file) is walked chunk by chunk from the start instead.

Either way chunks are read by `fusion.logs._scan.ChunkedRecording`, which bounds what any chunk
can cost and reads past damage: every intact chunk is used wherever the damage is, and the damage
is reported afterwards as a `CorruptRecordingError` naming the file and byte offset.
`fusion.logs.recover` rewrites the intact chunks into a new, valid, indexed file. The message
payloads are our own wire frames (`fusion.logs.framing`), returned as `RecordedMessage`s and
decoded with `fusion.wire.codec`.

View channels (another encoding than ours, such as the Foxglove channels `fusion record
--foxglove` writes beside the msgpack ones; `fusion.logs.framing.ViewSchema`) are derived copies:
`topics` and `messages` leave them out, so a replay never sees them; `view_topics` lists them,
`messages(views=True)` yields them as `ViewMessage`s (`fusion recover` copies them too), and
`summary` counts them like any channel.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, overload

import numpy as np
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, MetadataIndex, Schema

from fusion.errors import CorruptRecordingError, RecordingError
from fusion.logs._scan import (
    COMPRESSIONS,
    FOOTER,
    MAGIC,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_RECORD_BYTES,
    MAX_METADATA_RECORDS,
    MAX_SMALL_RECORD_BYTES,
    MAX_SUMMARY_BYTES,
    RECORD,
    Chunk,
    ChunkedRecording,
    RecordingFile,
    iter_records,
    read_metadata,
    read_schema_or_channel,
    summary_problem,
)
from fusion.logs.framing import RecordedMessage, ViewMessage
from fusion.logs.summary import RecordingSummary, TopicSummary, topic_summary
from fusion.wire.messages import Message

log = logging.getLogger(__name__)

__all__ = [
    "MAX_SUMMARY_BYTES",
    "RecordedMessage",
    "RecordingReader",
    "ViewMessage",
    "recorded_messages",
]

_U16_U32 = struct.Struct("<HI")  # a message index: channel id, byte length of its entries
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: A chunk index: message start, end, chunk offset, chunk length, bytes of the channel map.
_CHUNK_INDEX_HEAD = struct.Struct("<QQQQI")
_INDEX_OFFSET = np.dtype([("channel", "<u2"), ("offset", "<u8")])
_INDEX_ENTRY = np.dtype([("log_time", "<u8"), ("offset", "<u8")])
_SUMMARY_OPCODES = frozenset(int(op) for op in Opcode) - {Opcode.CHUNK, Opcode.MESSAGE}


class _Untrusted(Exception):  # noqa: N818 - internal signal: the index is not used
    pass


class RecordingReader:
    """Reads a recording: `messages` (filtered by topic and log time) and `summary`.

    `damage` is the `CorruptRecordingError` found so far (None for an intact file). Reading
    never stops early for damage: `messages` yields every message of every intact chunk first
    and raises the error afterwards.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise RecordingError(f"cannot open recording {self.path}: {exc}") from exc
        self._file = RecordingFile(self.path, handle)
        self.size_bytes = self._file.size_bytes
        if self._file.read(0, 8) != MAGIC:
            self._file.close()
            raise CorruptRecordingError(
                f"{self.path} is not an MCAP recording (no MCAP magic at offset 0, "
                f"{self.size_bytes} bytes)",
                path=str(self.path),
                offset=0,
            )
        self._summary_start = 0
        #: what a summary that parsed says, kept to name channels when its index is not used
        self._summary_schemas: dict[int, Schema] = {}
        self._summary_channels: dict[int, Channel] = {}
        why = summary_problem(self._file)
        index_problem = ""
        if why is None:
            try:
                self._chunks = ChunkedRecording.from_index(self._file, *self._read_index())
            except _Untrusted as exc:
                why = index_problem = str(exc)
        #: whether the file's own index was used (False: it was walked chunk by chunk)
        self.indexed = why is None
        if why is not None:
            log.warning("%s: %s; reading the file chunk by chunk", self.path, why)
            self._chunks = ChunkedRecording.walk(
                self._file,
                schemas=self._summary_schemas,
                channels=self._summary_channels,
                summary_offset=self._summary_start if index_problem else None,
                index_problem=index_problem,
            )
        self.channels: dict[int, Channel] = self._chunks.channels
        self.metadata: dict[str, dict[str, str]] = self._chunks.metadata

    # -- the index -----------------------------------------------------------------------------

    def _read_index(self) -> tuple[list[Chunk], dict, dict, dict]:
        """(chunks, schemas, channels, metadata) from a summary section that passed its CRC;
        `_Untrusted` when anything in it disagrees with the file."""
        size = self.size_bytes
        footer_offset = size - 8 - FOOTER.size
        self._summary_start = FOOTER.unpack(self._file.read(footer_offset, FOOTER.size))[2]
        summary = memoryview(
            self._file.read(self._summary_start, footer_offset - self._summary_start)
        )
        schemas: dict[int, Schema] = {}
        channels: dict[int, Channel] = {}
        indexes: list[memoryview] = []
        metadata_indexes: list[MetadataIndex] = []
        try:
            for opcode, body in iter_records(summary, _SUMMARY_OPCODES):
                if opcode in (Opcode.SCHEMA, Opcode.CHANNEL):
                    record = read_schema_or_channel(opcode, body)
                    (schemas if opcode == Opcode.SCHEMA else channels)[record.id] = record
                elif opcode == Opcode.CHUNK_INDEX:
                    indexes.append(body)
                elif opcode == Opcode.METADATA_INDEX:
                    if len(metadata_indexes) == MAX_METADATA_RECORDS:
                        raise ValueError(f"more than {MAX_METADATA_RECORDS} metadata records")
                    stream = ReadDataStream(io.BytesIO(bytes(body)))
                    metadata_indexes.append(MetadataIndex.read(stream))
        except Exception as exc:  # any parse failure: do not trust the index
            raise _Untrusted(f"the summary section cannot be parsed ({exc})") from exc
        self._summary_schemas, self._summary_channels = schemas, channels
        chunks: list[Chunk] = []
        for body in indexes:
            chunk = self._checked_chunk(body, channels)
            if (
                chunks
                and chunk.offset < chunks[-1].offset + chunks[-1].length + chunks[-1].index_bytes
            ):
                raise _Untrusted(f"chunk indexes overlap or are out of order ({chunk.offset})")
            chunks.append(chunk)
        metadata = {}
        for index in metadata_indexes:
            if not (index.offset >= 8 and index.offset + index.length <= self._summary_start):
                raise _Untrusted(f"a metadata index points outside the data ({index.offset})")
            if index.length > MAX_SMALL_RECORD_BYTES + RECORD.size:
                raise _Untrusted(f"a metadata record of {index.length} bytes")
            raw = self._file.read(index.offset, index.length)
            try:
                opcode, body = next(iter_records(memoryview(raw)))
                if opcode != Opcode.METADATA:
                    raise ValueError(f"opcode {opcode:#04x}")
                record = read_metadata(body)
            except Exception as exc:
                raise _Untrusted(f"no metadata record at {index.offset} ({exc})") from exc
            metadata[record.name] = dict(record.metadata)
        for channel in channels.values():
            if channel.schema_id and channel.schema_id not in schemas:
                raise _Untrusted(f"channel {channel.id} names unknown schema {channel.schema_id}")
        return chunks, schemas, channels, metadata

    def _checked_chunk(self, body: memoryview, channels: dict[int, Channel]) -> Chunk:
        """The chunk a chunk index record names, once the file agrees with it."""
        try:
            index = _parse_chunk_index(body)
        except (struct.error, ValueError) as exc:
            raise _Untrusted(f"a chunk index cannot be parsed ({exc})") from exc
        offset, length = index.offset, index.length
        data_end = self._summary_start
        if not (offset >= 8 and offset + length + index.index_bytes <= data_end):
            raise _Untrusted(f"a chunk index points outside the data section ({offset})")
        if length > MAX_CHUNK_RECORD_BYTES or index.uncompressed_bytes > MAX_CHUNK_BYTES:
            raise _Untrusted(f"the chunk at {offset} is over the size limits")
        if index.compression not in COMPRESSIONS:
            raise _Untrusted(f"the chunk at {offset} has compression {index.compression!r:.40}")
        if index.start_ns > index.end_ns:
            raise _Untrusted(f"the chunk at {offset} ends before it starts")
        unknown = set(index.message_indexes) - set(channels)
        if unknown:
            raise _Untrusted(f"the chunk index at {offset} names unknown channels {min(unknown)}")
        index_end = offset + length + index.index_bytes
        for message_index in index.message_indexes.values():
            if not (offset + length <= message_index < index_end):
                raise _Untrusted(f"a message index of the chunk at {offset} is outside its place")
        head = self._file.read(offset, RECORD.size + 8 * 3 + 4 + 4 + 4)
        if len(head) < RECORD.size + 36:
            raise _Untrusted(f"no chunk record at {offset}")
        opcode, body_length = RECORD.unpack_from(head)
        size = struct.unpack_from("<Q", head, RECORD.size + 16)[0]
        name_length = struct.unpack_from("<I", head, RECORD.size + 28)[0]
        name = head[RECORD.size + 32 : RECORD.size + 32 + name_length] if name_length <= 4 else b"?"
        if (
            opcode != Opcode.CHUNK
            or RECORD.size + body_length != length
            or size != index.uncompressed_bytes
            or name.decode(errors="replace") != index.compression
        ):
            raise _Untrusted(f"the chunk record at {offset} disagrees with its index")
        return index

    # -- reading -------------------------------------------------------------------------------

    @property
    def damage(self) -> CorruptRecordingError | None:
        return self._chunks.damage

    @property
    def chunks_read(self) -> int:
        """Chunks the queries so far had to read (a measure of what a filter saved)."""
        return self._chunks.chunks_read

    @property
    def topics(self) -> dict[str, str]:
        """Recorded topic -> message type name (our own channels; view channels are left out)."""
        return {
            ch.topic: self._type_name(ch)
            for ch in self.channels.values()
            if not self._chunks.is_view(ch)
        }

    @property
    def view_topics(self) -> dict[str, str]:
        """View channel topic -> schema name (``foxglove.CompressedImage``; the message encoding
        for a schemaless channel)."""
        return {
            ch.topic: self._chunks.view_schema(ch).name or ch.message_encoding
            for ch in self.channels.values()
            if self._chunks.is_view(ch)
        }

    def _type_name(self, channel: Channel) -> str:
        if self._chunks.is_view(channel):
            return self._chunks.view_schema(channel).name or channel.message_encoding
        schema = self._chunks.schemas.get(channel.schema_id)
        return schema.name if schema else channel.metadata.get("message_type", "?")

    @property
    def start_ns(self) -> int:
        return self._chunks.start_ns

    @property
    def end_ns(self) -> int:
        return self._chunks.end_ns

    @overload
    def messages(
        self,
        topics: Iterable[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        views: Literal[False] = False,
    ) -> Iterator[RecordedMessage]: ...

    @overload
    def messages(
        self,
        topics: Iterable[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        views: bool,
    ) -> Iterator[RecordedMessage | ViewMessage]: ...

    def messages(
        self,
        topics: Iterable[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        views: bool = False,
    ) -> Iterator[RecordedMessage | ViewMessage]:
        """Messages in log-time order, on `topics` (all if None), with ``start_ns <= log time <
        end_ns``. Reads only the chunks that can hold them. Raises `CorruptRecordingError` after
        yielding every message of the intact chunks when the file is damaged (unless the window
        ends before the damage).

        Only our own channels' `RecordedMessage`s unless `views`: then view channels'
        `ViewMessage`s too. Naming a view topic in `topics` without `views` is a
        `RecordingError` (it cannot be decoded or replayed)."""
        topics = [topics] if isinstance(topics, str) else None if topics is None else list(topics)
        if not views and topics is not None:
            asked = set(topics) & set(self.view_topics) - set(self.topics)
            if asked:
                raise RecordingError(
                    f"{self.path}: {sorted(asked)} are view channels "
                    f"({', '.join(sorted({self.view_topics[t] for t in asked}))}), "
                    "not messages of ours; open them in their viewer (Foxglove)"
                )
        return self._chunks.messages(topics, start_ns, end_ns, views)

    def verify(self) -> None:
        """Read every chunk, raising `CorruptRecordingError` if any is damaged."""
        deque(self.messages(), maxlen=0)

    def summary(self) -> RecordingSummary:
        """Topics, counts, rates, duration, gaps and size, from the message indexes where they
        can be trusted (no chunk is decompressed), else from the chunks."""
        per_channel = self._indexed_log_times() if self.indexed else None
        if per_channel is None:
            per_channel = self._chunks.log_times()
        compressed, uncompressed = self._chunks.chunk_sizes()
        topics: dict[str, TopicSummary] = {}
        known = {cid: times for cid, times in per_channel.items() if cid in self.channels}
        for cid, times in sorted(known.items(), key=lambda kv: self.channels[kv[0]].topic):
            channel = self.channels[cid]
            topics[channel.topic] = topic_summary(channel.topic, self._type_name(channel), times)
        return RecordingSummary(
            path=str(self.path),
            size_bytes=self.size_bytes,
            indexed=self.indexed,
            start_ns=min((t.first_ns for t in topics.values()), default=0),
            end_ns=max((t.last_ns for t in topics.values()), default=0),
            message_count=sum(t.count for t in topics.values()),
            chunk_count=sum(1 for c in self._chunks.chunks if c.intact is not False),
            compressed_bytes=compressed,
            uncompressed_bytes=uncompressed,
            topics=topics,
            metadata=self.metadata,
            damage=str(self.damage) if self.damage else None,
        )

    def _indexed_log_times(self) -> dict[int, np.ndarray] | None:
        """Channel id -> sorted log times from the message index records after each chunk
        (read in one piece per chunk; nothing is decompressed); None when a chunk has none or
        they do not check (then the chunks are read)."""
        parts: dict[int, list[np.ndarray]] = {}
        for chunk in self._chunks.chunks:
            if not chunk.message_indexes:
                return None
            block = memoryview(self._file.read(chunk.offset + chunk.length, chunk.index_bytes))
            try:
                for channel_id, times in _message_index_records(block, chunk.message_indexes):
                    parts.setdefault(channel_id, []).append(times)
            except ValueError as exc:
                log.warning("%s: %s; reading the chunks", self.path, exc)
                return None
        return {cid: np.sort(np.concatenate(ts)) for cid, ts in parts.items()}

    def close(self) -> None:
        self._chunks.close()
        self._file.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_chunk_index(body: memoryview) -> Chunk:
    """A chunk index record's body as a `Chunk` (struct, not `mcap.records`: a summary may hold
    hundreds of thousands of them)."""
    start_ns, end_ns, offset, length, map_bytes = _CHUNK_INDEX_HEAD.unpack_from(body)
    pos = _CHUNK_INDEX_HEAD.size
    if map_bytes % _INDEX_OFFSET.itemsize or pos + map_bytes > len(body):
        raise ValueError(f"message index map of {map_bytes} bytes")
    pairs = np.frombuffer(body[pos : pos + map_bytes], _INDEX_OFFSET)
    pos += map_bytes
    (index_bytes,) = _U64.unpack_from(body, pos)
    (name_length,) = _U32.unpack_from(body, pos + 8)
    name = bytes(body[pos + 12 : pos + 12 + min(name_length, 16)]).decode(errors="replace")
    _, uncompressed = struct.unpack_from("<QQ", body, pos + 12 + name_length)
    return Chunk(
        int(offset),
        int(length),
        start_ns=int(start_ns),
        end_ns=int(end_ns),
        uncompressed_bytes=int(uncompressed),
        channel_ids=frozenset(pairs["channel"].tolist()) or None,
        message_indexes={
            int(c): int(o) for c, o in zip(pairs["channel"], pairs["offset"], strict=True)
        },
        index_bytes=int(index_bytes),
        compression=name,
    )


def _message_index_records(block: memoryview, expected: dict[int, int]):
    """(channel id, log times) of the message index records in `block` (the bytes after a
    chunk); ValueError unless there is exactly one per channel of `expected` (channel id ->
    offset, from the chunk's index)."""
    found: dict[int, int] = {}
    for _, body in iter_records(block, frozenset((Opcode.MESSAGE_INDEX,))):
        channel_id, entries_length = _U16_U32.unpack_from(body)
        if entries_length != len(body) - _U16_U32.size or entries_length % _INDEX_ENTRY.itemsize:
            raise ValueError(f"a message index of channel {channel_id} is malformed")
        found[channel_id] = found.get(channel_id, 0) + 1
        entries = np.frombuffer(body[_U16_U32.size :], _INDEX_ENTRY)
        yield channel_id, entries["log_time"].astype(np.int64)
    if set(found) != set(expected) or any(n != 1 for n in found.values()):
        raise ValueError("the message indexes after a chunk do not match its index")


def recorded_messages(
    path: str | os.PathLike[str], topics: Iterable[str] | None = None
) -> Iterator[tuple[str, Message]]:
    """``(topic, message)`` of a recording (on `topics`, all if None), in log-time order."""
    with RecordingReader(path) as reader:
        for record in reader.messages(topics=None if topics is None else sorted(topics)):
            yield record.topic, record.decode()
