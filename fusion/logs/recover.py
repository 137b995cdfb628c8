"""Recovering a damaged recording: every intact chunk copied into a new, valid, indexed file.

A recorder killed with SIGKILL, a full disk, a truncated copy or flipped bytes leave a file
without its summary or with damaged chunks; `recover` reads it through `RecordingReader`, which
skips damage and resynchronises on the next chunk, so every intact chunk is kept wherever the
damage is, and writes what it holds with `RecordingWriter`: our own channels and the view
channels (Foxglove's) alike.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fusion.errors import CorruptRecordingError, RecordingError
from fusion.logs.framing import METADATA_NAME, ViewMessage
from fusion.logs.reader import RecordingReader
from fusion.logs.writer import DEFAULT_CHUNK_SIZE, RecordingWriter

log = logging.getLogger(__name__)


def recover(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, int]:
    """Copy every message of every intact chunk of `src` into a new, valid, indexed `dst`.

    Returns messages recovered per topic (view channels included). The damage found (if any) is
    logged, not raised.
    """
    if Path(src).resolve() == Path(dst).resolve():
        raise RecordingError(f"recover needs a new output file, not the damaged one ({src})")
    with RecordingReader(src) as reader:
        meta = dict(reader.metadata.get(METADATA_NAME, {}))
        meta["recovered_from"] = str(src)
        meta["recovered_damage"] = str(reader.damage) if reader.damage else ""
        with RecordingWriter(dst, chunk_size=chunk_size, metadata=meta) as writer:
            try:
                copy_messages(reader, writer)
            except CorruptRecordingError as exc:
                total = sum(writer.counts.values()) + sum(writer.view_counts.values())
                log.warning("recovered %d messages; then: %s", total, exc)
            return {**writer.counts, **writer.view_counts}


def copy_messages(reader: RecordingReader, writer: RecordingWriter) -> None:
    """Write every message `reader` holds into `writer`, byte for byte, with its log time,
    publish time and sequence: our channels and the view channels alike. Raises the reader's
    `CorruptRecordingError` after copying every intact chunk of a damaged file."""
    for m in reader.messages(views=True):
        if isinstance(m, ViewMessage):
            writer.write_view(
                m.topic, m.schema, m.data, m.log_time_ns, m.publish_time_ns, sequence=m.sequence
            )
        else:
            writer.write_frames(
                m.topic, m.frames, m.log_time_ns, m.publish_time_ns, sequence=m.sequence
            )
