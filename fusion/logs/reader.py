"""Reading recordings: messages filtered by topic and time, summaries, and damaged files.

`RecordingReader` reads an intact file with the `mcap` package's reader: its summary (chunk
indexes, message indexes, statistics, metadata) lets a topic filter and a time window read only
the chunks they need. The message payloads are our own wire frames (`fusion.logs.framing`); the
reader returns them as `RecordedMessage`s and decodes them with `fusion.wire.codec`.

A file whose footer or summary is missing or fails its CRC (a recorder killed with SIGKILL, a
truncated copy), or whose chunks turn out damaged while reading, is handed to the damage scanner
(`fusion.logs._scan`): it uses every complete chunk before the damage, and the damage itself is
reported as a `CorruptRecordingError` naming the file and byte offset, after everything before it
has been yielded. `fusion.logs.recover` rewrites those chunks into a new, valid, indexed file.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

from mcap.reader import SeekingReader, make_reader
from mcap.records import Channel, ChunkIndex, MessageIndex, Schema
from mcap.stream_reader import StreamReader

from fusion.errors import CorruptRecordingError, DecodeError, RecordingError
from fusion.logs._scan import MAGIC, ScannedRecording, summary_problem
from fusion.logs.framing import MESSAGE_ENCODING, RecordedMessage, unframe_message
from fusion.logs.summary import RecordingSummary, TopicSummary, topic_summary
from fusion.wire.messages import Message

log = logging.getLogger(__name__)

__all__ = ["RecordedMessage", "RecordingReader", "recorded_messages"]


class RecordingReader:
    """Reads a recording: `messages` (filtered by topic and log time) and `summary`.

    `damage` is the `CorruptRecordingError` found so far (None for an intact file). Reading
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
        if self._read(0, 8) != MAGIC:
            self._file.close()
            raise CorruptRecordingError(
                f"{self.path} is not an MCAP recording (no MCAP magic at offset 0, "
                f"{self.size_bytes} bytes)",
                path=str(self.path),
                offset=0,
            )
        self._mcap: SeekingReader | None = None
        self._scanned: ScannedRecording | None = None
        self._chunks: list[ChunkIndex] = []
        self.channels: dict[int, Channel] = {}
        self._schemas: dict[int, Schema] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self._selected_chunks = 0
        why = summary_problem(self._read, self.size_bytes) or self._open_with_mcap()
        #: whether the file's own index was used (False: it was scanned chunk by chunk)
        self.indexed = why is None
        if why is not None:
            log.warning("%s: %s; scanning the file chunk by chunk", self.path, why)
            self._fall_back()

    def _read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (a damaged length never reads past the end)."""
        self._file.seek(offset)
        return self._file.read(max(0, min(length, self.size_bytes - offset)))

    def _open_with_mcap(self) -> str | None:
        """Open the summary with `mcap`'s reader; why it is unusable, or None."""
        try:
            self._file.seek(0)
            reader = make_reader(self._file, validate_crcs=True)
            summary = reader.get_summary()
            if summary is None:
                return "no summary section"
            for index in summary.chunk_indexes:
                end = index.chunk_start_offset + index.chunk_length
                if index.chunk_start_offset < 8 or end > self.size_bytes:
                    return f"a chunk index points outside the file ({index.chunk_start_offset})"
            metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        except Exception as exc:  # any parse failure: do not trust the index
            return f"the summary section cannot be parsed ({exc})"
        self._mcap = reader
        self._chunks = list(summary.chunk_indexes)
        self.channels = dict(summary.channels)
        self._schemas = dict(summary.schemas)
        self.metadata = metadata
        return None

    def _fall_back(self) -> ScannedRecording:
        """Hand the file to the damage scanner (once); it finds what is intact."""
        if self._scanned is None:
            self._scanned = ScannedRecording(self.path, self._read, self.size_bytes)
            self._mcap = None
            self.channels = self._scanned.channels
            self.metadata = self._scanned.metadata
        return self._scanned

    @property
    def damage(self) -> CorruptRecordingError | None:
        return self._scanned.damage if self._scanned is not None else None

    @property
    def chunks_read(self) -> int:
        """Chunks the queries so far had to read (a measure of what a filter saved)."""
        scanned = self._scanned.chunks_read if self._scanned is not None else 0
        return self._selected_chunks + scanned

    @property
    def topics(self) -> dict[str, str]:
        """Recorded topic -> message type name."""
        return {ch.topic: self._type_name(ch) for ch in self.channels.values()}

    def _type_name(self, channel: Channel) -> str:
        schemas = self._scanned.schemas if self._scanned is not None else self._schemas
        schema = schemas.get(channel.schema_id)
        return schema.name if schema else channel.metadata.get("message_type", "?")

    @property
    def start_ns(self) -> int:
        if self._scanned is not None:
            return self._scanned.start_ns
        return min((c.message_start_time for c in self._chunks), default=0)

    @property
    def end_ns(self) -> int:
        if self._scanned is not None:
            return self._scanned.end_ns
        return max((c.message_end_time for c in self._chunks), default=0)

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
        topics = [topics] if isinstance(topics, str) else None if topics is None else list(topics)
        # What was yielded before damage showed up: every message before `last_ns`, and those
        # at `last_ns` counted by identity (the scanner yields the same order).
        last_ns, at_last = -1, Counter[tuple]()
        if self._mcap is not None:
            self._selected_chunks += self._count_selected(topics, start_ns, end_ns)
            try:
                for _, channel, message in self._mcap.iter_messages(
                    topics, starting_at=start_ns, ending_before=end_ns, log_time_order=True
                ):
                    rec = self._record(channel, message)
                    if rec.log_time_ns != last_ns:
                        last_ns, at_last = rec.log_time_ns, Counter()
                    at_last[_identity(rec)] += 1
                    yield rec
                return
            except RecordingError:
                raise
            except Exception as exc:  # damage found while reading: the scanner takes over
                log.warning("%s: %s; scanning the file chunk by chunk", self.path, exc)
        for rec in self._fall_back().messages(topics, start_ns, end_ns):
            if rec.log_time_ns < last_ns:
                continue
            key = _identity(rec)
            if rec.log_time_ns == last_ns and at_last[key]:
                at_last[key] -= 1
                continue
            yield rec

    def _count_selected(
        self, topics: list[str] | None, start_ns: int | None, end_ns: int | None
    ) -> int:
        ids = (
            None if topics is None else {c for c, ch in self.channels.items() if ch.topic in topics}
        )
        return sum(
            1
            for c in self._chunks
            if (start_ns is None or c.message_end_time >= start_ns)
            and (end_ns is None or c.message_start_time < end_ns)
            and (ids is None or not c.message_index_offsets or ids & set(c.message_index_offsets))
        )

    def _record(self, channel: Channel, message) -> RecordedMessage:
        if channel.message_encoding != MESSAGE_ENCODING:
            raise RecordingError(
                f"{self.path}: channel {channel.topic!r} has encoding "
                f"{channel.message_encoding!r}; this build reads {MESSAGE_ENCODING!r}"
            )
        try:
            frames = unframe_message(memoryview(message.data))
        except DecodeError as exc:
            raise ValueError(f"message on {channel.topic!r}: {exc}") from exc
        return RecordedMessage(
            channel.topic,
            message.log_time,
            message.publish_time,
            message.sequence,
            [channel.topic.encode(), *frames],
        )

    def verify(self) -> None:
        """Read every chunk, raising `CorruptRecordingError` at the first damaged one."""
        deque(self.messages(), maxlen=0)

    def summary(self) -> RecordingSummary:
        """Topics, counts, rates, duration, gaps and size, from the index where there is one."""
        if self._mcap is not None:
            try:
                per_channel = self._indexed_log_times()
            except Exception as exc:  # a damaged message index: the scanner takes over
                log.warning("%s: %s; scanning the file chunk by chunk", self.path, exc)
                self._fall_back()
        if self._scanned is None:
            compressed = sum(c.chunk_length for c in self._chunks)
            uncompressed = sum(c.uncompressed_size for c in self._chunks)
            chunk_count = len(self._chunks)
        else:
            per_channel = self._scanned.log_times()
            compressed, uncompressed = self._scanned.chunk_sizes()
            chunk_count = len(self._scanned.chunks)
        topics: dict[str, TopicSummary] = {}
        for cid, times in sorted(per_channel.items(), key=lambda kv: self.channels[kv[0]].topic):
            channel = self.channels[cid]
            times.sort()
            topics[channel.topic] = topic_summary(channel.topic, self._type_name(channel), times)
        return RecordingSummary(
            path=str(self.path),
            size_bytes=self.size_bytes,
            indexed=self.indexed,
            start_ns=min((t.first_ns for t in topics.values()), default=0),
            end_ns=max((t.last_ns for t in topics.values()), default=0),
            message_count=sum(t.count for t in topics.values()),
            chunk_count=chunk_count,
            compressed_bytes=compressed,
            uncompressed_bytes=uncompressed,
            topics=topics,
            metadata=self.metadata,
            damage=str(self.damage) if self.damage else None,
        )

    def _indexed_log_times(self) -> dict[int, list[int]]:
        """Channel id -> log times, from the message indexes after each chunk (no chunk is
        decompressed); a file written without message indexes is read message by message."""
        times: dict[int, list[int]] = {}
        if any(not c.message_index_offsets for c in self._chunks):
            assert self._mcap is not None
            for _, channel, message in self._mcap.iter_messages(log_time_order=False):
                times.setdefault(channel.id, []).append(message.log_time)
            return times
        for chunk in self._chunks:
            for cid, offset in chunk.message_index_offsets.items():
                self._file.seek(offset)
                index = next(StreamReader(self._file, skip_magic=True).records)
                if not isinstance(index, MessageIndex) or index.channel_id != cid:
                    raise ValueError(f"no message index of channel {cid} at offset {offset}")
                times.setdefault(cid, []).extend(t for t, _ in index.records)
        return times

    def close(self) -> None:
        if self._scanned is not None:
            self._scanned.close()
        self._file.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity(rec: RecordedMessage) -> tuple:
    return (rec.topic, rec.log_time_ns, rec.publish_time_ns, rec.sequence)


def recorded_messages(
    path: str | os.PathLike[str], topics: Iterable[str] | None = None
) -> Iterator[tuple[str, Message]]:
    """``(topic, message)`` of a recording (on `topics`, all if None), in log-time order."""
    with RecordingReader(path) as reader:
        for record in reader.messages(topics=None if topics is None else sorted(topics)):
            yield record.topic, record.decode()
