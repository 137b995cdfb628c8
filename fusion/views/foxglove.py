"""Foxglove: ``fusion export foxglove`` (a recording as a file Foxglove opens) and ``fusion view
--foxglove`` (the running graph over the Foxglove SDK's WebSocket server).

    fusion export foxglove drive.mcap -o drive.foxglove.mcap [--with-msgpack]
    fusion view --foxglove [--host 127.0.0.1] [--port 8765] [--duration-s S]

Both show what `fusion.logs.foxglove.FoxgloveConverter` makes of each message (the channels,
schemas and frame ids are listed there and in ``docs/viewers.md``); ``docs/foxglove/layout.json``
is a layout for them. The export writes only the Foxglove channels by default: a file for
Foxglove, a third the size of one holding both. With ``--with-msgpack`` it also copies the
msgpack channels byte for byte, so the result is still a recording `fusion play` replays (what
``fusion record --foxglove`` writes as it records). View channels already in the input are not
copied: they are made again from the msgpack messages.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import foxglove

from fusion.core.ratelog import RateLimitedLog
from fusion.errors import ConfigError, CorruptRecordingError, DecodeError
from fusion.logs.foxglove import (
    CHANNELS,
    FoxgloveChannels,
    FoxgloveConverter,
    FoxgloveMessage,
)
from fusion.logs.framing import METADATA_NAME
from fusion.logs.reader import RecordingReader
from fusion.logs.writer import RecordingWriter
from fusion.runtime import node
from fusion.views.live import LiveSource

log = logging.getLogger(__name__)

#: Foxglove's own default WebSocket port (what its "Open connection" dialog proposes).
DEFAULT_PORT = 8765
#: Outgoing messages the server buffers per client before it drops the oldest (the SDK's
#: default): about 50 s of every channel at the nominal rates.
DEFAULT_BACKLOG = 1024
#: How long one poll of the graph waits for messages (ms): the loop's tick.
POLL_MS = 50


# -- export ---------------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--with-msgpack",
        action="store_true",
        help="also copy the msgpack channels, so the output still replays with `fusion play`",
    )


def export(args: argparse.Namespace) -> int:
    """Write `args.file` as `args.output` in Foxglove's schemas. A message that does not decode
    is counted, logged and skipped; a damaged input is exported up to every intact chunk, then
    reported (exit 2)."""
    src, dst = Path(args.file), Path(args.output)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ConfigError(f"export needs a new output file, not its input ({src})")
    undecodable = 0
    damage: CorruptRecordingError | None = None
    bad_input = RateLimitedLog(log)
    with RecordingReader(src) as reader:
        meta = dict(reader.metadata.get(METADATA_NAME, {}))
        meta["exported_from"] = str(src)
        with RecordingWriter(dst, metadata=meta) as writer:
            views = FoxgloveChannels(writer, FoxgloveConverter(args.min_score))
            try:
                for rec in reader.messages():
                    if args.with_msgpack:
                        writer.write_frames(
                            rec.topic,
                            rec.frames,
                            rec.log_time_ns,
                            rec.publish_time_ns,
                            sequence=rec.sequence,
                        )
                    try:
                        msg = rec.decode()
                    except DecodeError as exc:
                        undecodable += 1
                        bad_input.warning(
                            rec.topic, f"skipped a {rec.topic} message that does not decode: {exc}"
                        )
                        continue
                    views.write(rec.topic, msg, rec.log_time_ns)
            except CorruptRecordingError as exc:
                damage = exc
    skipped = dict(views.converter.skipped)
    print(
        f"wrote {dst}: {sum(writer.view_counts.values())} Foxglove messages "
        f"{json.dumps(writer.view_counts, sort_keys=True)}"
        + (f", {sum(writer.counts.values())} msgpack messages" if args.with_msgpack else "")
        + (f"; skipped {undecodable} that did not decode" if undecodable else "")
        + (f"; not shown {json.dumps(skipped, sort_keys=True)}" if skipped else "")
    )
    if damage is not None:
        print(f"fusion export: error: {damage}", file=sys.stderr)
        return 2
    return 0


# -- live view ------------------------------------------------------------------------------


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--foxglove-backlog",
        type=int,
        default=DEFAULT_BACKLOG,
        help="Foxglove: messages buffered per client before the oldest are dropped",
    )


class _Channels:
    """The server's channels, one per Foxglove topic the converter makes, all made before the
    server starts: a client then sees every channel advertised as it connects. (A channel made
    while a client is connected is advertised at once, but with foxglove-sdk 0.30 a subscription
    sent straight back can be refused as an "Unknown channel ID", and its messages never come.)"""

    def __init__(self, context: foxglove.Context) -> None:
        self._channels = {
            topic: foxglove.Channel(
                topic,
                schema=foxglove.Schema(
                    name=schema.name, encoding=schema.encoding, data=schema.data
                ),
                message_encoding=schema.message_encoding,
                context=context,
            )
            for topic, schema in CHANNELS.items()
        }

    def log(self, view: FoxgloveMessage, log_time_ns: int) -> None:
        self._channels[view.topic].log(view.data, log_time=log_time_ns)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def view(args: argparse.Namespace) -> int:
    """Serve the running graph to Foxglove until SIGINT/SIGTERM or `args.duration_s`."""
    port = DEFAULT_PORT if args.port is None else args.port
    if not 0 <= port <= 65535 or args.foxglove_backlog < 1:
        raise ConfigError(
            f"--port must be 0-65535 and --foxglove-backlog >= 1, got {port} and "
            f"{args.foxglove_backlog}"
        )
    shutdown = node.ShutdownFlag()
    source = LiveSource(overrides=node.endpoint_overrides(args))
    context = foxglove.Context()
    channels = _Channels(context)
    try:
        server = foxglove.start_server(
            name="fusion",
            host=args.host,
            port=port,
            context=context,
            message_backlog_size=args.foxglove_backlog,
        )
    except Exception as exc:  # the SDK raises its own errors (a port in use, a bad address)
        channels.close()
        source.close()
        raise ConfigError(f"cannot serve Foxglove on {args.host}:{port}: {exc}") from exc
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who reaches it sees the graph", args.host)
    log.info(
        "Foxglove WebSocket server on ws://%s:%d (open it in Foxglove: Open connection, or %s)",
        args.host,
        server.port,
        server.app_url(),
    )
    converter = FoxgloveConverter(args.min_score)
    stats = node.StatsLine(
        "view",
        args.stats_period_s,
        lambda: f"inputs {source.problems() or 'ok'}; not shown {dict(converter.skipped)}",
    )
    stop_ns = time.monotonic_ns() + int(args.duration_s * 1e9) if args.duration_s > 0 else None
    try:
        while not shutdown:
            for topic, msg, received_ns in source.poll(POLL_MS):
                for out in converter.convert(topic, msg, received_ns):
                    channels.log(out, received_ns)
            now_ns = time.monotonic_ns()
            stats.tick(now_ns)
            if stop_ns is not None and now_ns >= stop_ns:
                break
    finally:
        channels.close()
        server.stop()
        source.close()
    log.info("view counters at close: %s", json.dumps(source.counters(), sort_keys=True))
    return 0
