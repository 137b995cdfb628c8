"""The recording sub-commands: ``fusion info``, ``play``, ``record`` and ``recover``.

Each is a thin layer over the package: `reader` and `summary` (info), `player` and `faults`
(play), `recorder` and `writer` (record), `recover`; ``nodes/player.py`` and
``nodes/recorder.py`` run the same code as stand-alone processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fusion.errors import ConfigError, ReplayError
from fusion.logs.faults import parse_specs
from fusion.logs.player import (
    CONTROL_TOPIC,
    DEFAULT_LOCKSTEP_DEPTH,
    DEFAULT_LOCKSTEP_TIMEOUT_S,
    MAX_RATE,
    MIN_RATE,
    Player,
    PlayStats,
)
from fusion.logs.reader import RecordingReader
from fusion.logs.recorder import RECORDER_QUEUE_SIZE, Recorder
from fusion.logs.recover import recover
from fusion.logs.writer import COMPRESSIONS, DEFAULT_CHUNK_SIZE, RecordingWriter
from fusion.perception.sync import DEFAULT_SLOP_MS
from fusion.runtime import heartbeat, node
from fusion.runtime.transport import Publisher, Subscriber
from fusion.wire import services

log = logging.getLogger(__name__)

#: How long a replay waits for its subscribers by default: a moment for a timed replay (late
#: subscribers lose messages, as they would live); a lock-step replay has no use without its
#: consumer, and the fusion node subscribes only after loading and warming up its model
#: (4-24 s on 2 busy cores, more on a slow disk).
WAIT_SUBSCRIBERS_S = 1.0
WAIT_CONSUMER_S = 180.0
WAIT_PROGRESS_S = 5.0
#: Once the other topics have their subscribers, how long to wait for one on the control topic.
WAIT_CONTROL_S = 1.0


def _topic_list(text: str) -> list[str]:
    topics = [t for t in text.split(",") if t]
    if not topics:
        raise argparse.ArgumentTypeError("give topics as a comma-separated list")
    return topics


# -- info ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="recording (.mcap)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--verify", action="store_true", help="also read every chunk and check its CRC"
    )


def run(args: argparse.Namespace) -> int:
    with RecordingReader(args.file) as reader:
        if args.verify:
            reader.verify()
        summary = reader.summary()
    print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.format())
    if summary.damage:
        print(f"fusion info: error: {summary.damage}", file=sys.stderr)
        return 2
    return 0


# -- play ----------------------------------------------------------------------------------


def add_play_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="recording (.mcap)")
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help=f"speed factor, {MIN_RATE} to {MAX_RATE} (default 1)",
    )
    timing.add_argument("--max-speed", action="store_true", help="publish as fast as possible")
    timing.add_argument(
        "--lockstep",
        action="store_true",
        help="after each camera frame, wait for the detections that answer it",
    )
    parser.add_argument(
        "--lockstep-timeout-s",
        type=float,
        default=DEFAULT_LOCKSTEP_TIMEOUT_S,
        help="longest wait for an answer in lock-step (counted, then moves on)",
    )
    parser.add_argument(
        "--lockstep-window-ms",
        type=float,
        default=DEFAULT_SLOP_MS,
        help="lock-step: before waiting for a frame's answer, send everything captured up to "
        "this long after it (at least the fusion node's --slop-ms)",
    )
    parser.add_argument(
        "--lockstep-depth",
        type=int,
        default=DEFAULT_LOCKSTEP_DEPTH,
        help="lock-step: frames sent ahead of their answers (1 = wait for each frame's answer "
        "before sending the next window; the outputs are the same either way)",
    )
    parser.add_argument("--loop", action="store_true", help="play again and again until stopped")
    parser.add_argument("--start", type=float, default=0.0, help="start this many seconds in")
    parser.add_argument("--end", type=float, default=None, help="stop this many seconds in")
    parser.add_argument("--topics", type=_topic_list, default=None, help="comma-separated topics")
    parser.add_argument(
        "--wait-subscribers-s",
        type=float,
        default=None,
        help=f"wait this long for a subscriber on every topic before starting (0: do not; "
        f"default {WAIT_SUBSCRIBERS_S:g} s, in lock-step {WAIT_CONSUMER_S:g} s for the consumer, "
        "after which the replay fails)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    parser.add_argument(
        "--inject",
        action="append",
        default=None,
        metavar="FAULT",
        help="inject a sensor fault, e.g. drop:radar:2s@3s, delay:camera:80ms, reorder:radar, "
        "duplicate:camera, freeze:camera:1s, clock-jump:camera:+500ms (repeatable; "
        "see docs/reliability.md)",
    )
    node.add_common_arguments(parser)


def _wait_for_subscribers(
    publishers: dict[str, Publisher], answers: Subscriber | None, timeout_s: float
) -> list[str]:
    """Wait up to `timeout_s` for a subscriber on every topic but the control topic (and, in
    lock-step, for the connection to the answers' publisher), logging progress; then a moment
    more for one on the control topic (a consumer that takes lock-step steps subscribes to it
    first; a simple one does not). Returns what is still missing."""
    start = time.monotonic()
    next_progress = start + WAIT_PROGRESS_S
    waiting = sorted(t for t in publishers if t != CONTROL_TOPIC)
    while True:
        waiting = [t for t in waiting if publishers[t].subscriber_count() < 1]
        if answers is not None and answers.security is not None and answers.security.succeeded:
            answers = None
        missing = waiting + ([f"{answers.topic} (publisher)"] if answers is not None else [])
        now = time.monotonic()
        if not missing or now - start >= timeout_s:
            break
        if now >= next_progress:
            next_progress = now + WAIT_PROGRESS_S
            log.info("waiting for %s (%.0f of %.0f s)", ", ".join(missing), now - start, timeout_s)
        heartbeat.sleep(0.01)
    if not missing and CONTROL_TOPIC in publishers:
        if not publishers[CONTROL_TOPIC].wait_for_subscribers(1, timeout_s=WAIT_CONTROL_S):
            log.info("no subscriber on %s: consumers will not see the replay's pace", CONTROL_TOPIC)
    elif not missing:
        time.sleep(0.02)  # subscriptions arrive slightly before the pipes are ready
    return missing


def _progress_printer(stats_period_s: float) -> Callable[[PlayStats], None]:
    if sys.stderr.isatty():
        return lambda stats: print(f"\r{stats.line()}", end="", file=sys.stderr, flush=True)
    next_ns = [0]

    def log_line(stats: PlayStats) -> None:
        now = time.monotonic_ns()
        if stats_period_s > 0 and now >= next_ns[0]:
            next_ns[0] = now + int(stats_period_s * 1e9)
            log.info("%s", stats.line())

    return log_line


def _on_signals(handler: Callable[[], None]) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: handler())
        signal.signal(signal.SIGTERM, lambda *_: handler())


def run_play(args: argparse.Namespace) -> int:
    overrides = node.endpoint_overrides(args)
    faults = parse_specs(args.inject)
    wait_s = args.wait_subscribers_s
    if wait_s is None:
        wait_s = WAIT_CONSUMER_S if args.lockstep else WAIT_SUBSCRIBERS_S
    with RecordingReader(args.file) as reader:
        topics = args.topics or [
            t
            for t in reader.topics
            if not (args.lockstep and t == "detections") and t != CONTROL_TOPIC
        ]
        publishers: dict[str, Publisher] = {}
        answers = None
        try:
            for topic in [*topics, CONTROL_TOPIC]:
                publishers[topic] = Publisher(topic, services.endpoint(topic, overrides))
            if args.lockstep:
                answers = Subscriber(
                    "detections",
                    services.endpoint("detections", overrides),
                    track_connection=True,
                )
            player = Player(
                reader,
                publishers,
                rate=args.rate,
                max_speed=args.max_speed,
                lockstep=args.lockstep,
                answers=answers,
                lockstep_timeout_s=args.lockstep_timeout_s,
                lockstep_window_ms=args.lockstep_window_ms,
                lockstep_depth=args.lockstep_depth,
                loop=args.loop,
                start_s=args.start,
                end_s=args.end,
                topics=topics,
                faults=faults,
            )
            _on_signals(player.stop)
            if wait_s > 0:
                missing = _wait_for_subscribers(publishers, answers, wait_s)
                if missing and args.lockstep:
                    raise ReplayError(
                        f"lock-step: no consumer after {wait_s:g} s (still missing: "
                        f"{', '.join(missing)}); start the fusion node with --lockstep, or wait "
                        "longer with --wait-subscribers-s"
                    )
                if missing:
                    log.info("no subscriber yet on %s; publishing anyway", ", ".join(missing))
            progress = None if args.no_progress else _progress_printer(args.stats_period_s)
            stats = player.run(on_progress=progress)
        finally:
            for pub in publishers.values():
                pub.close()
            if answers is not None:
                answers.close()
    if progress is not None and sys.stderr.isatty():
        print(file=sys.stderr)
    log.info("played %d messages %s", stats.published, stats.per_topic)
    if faults is not None:
        log.info("injected faults (messages touched): %s", faults.summary())
    if stats.damage:
        print(f"fusion play: error: {stats.damage}", file=sys.stderr)
        return 2
    return 0


# -- record --------------------------------------------------------------------------------


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--out", default=None, help="output file (default recording-YYYYMMDD-HHMMSS.mcap)"
    )
    parser.add_argument(
        "--topics",
        type=_topic_list,
        default=None,
        help="comma-separated topics (default: every topic the registry marks as recorded)",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per chunk"
    )
    parser.add_argument("--compression", choices=sorted(COMPRESSIONS), default="zstd")
    parser.add_argument(
        "--flush-s",
        type=float,
        default=1.0,
        help="finish the open chunk at least this often, bounding what a crash can lose",
    )
    parser.add_argument(
        "--duration-s", type=float, default=0.0, help="stop after this long (0: at SIGINT)"
    )
    parser.add_argument(
        "--queue-size", type=int, default=RECORDER_QUEUE_SIZE, help="receive queue per topic"
    )
    parser.add_argument(
        "--foxglove",
        action="store_true",
        help="also write each message in Foxglove's schemas (view channels beside the msgpack "
        "ones; see docs/viewers.md), so Foxglove opens the recording as it is",
    )
    node.add_common_arguments(parser)


def _unused_path(path: str) -> str:
    """`path`, or ``stem.N.suffix`` (the first N that is free) when it exists: a recorder
    restarted by the launcher must not overwrite what the killed one left for `fusion recover`."""
    p = Path(path)
    if not p.exists():
        return path
    n = 1
    while (candidate := p.with_name(f"{p.stem}.{n}{p.suffix}")).exists():
        n += 1
    log.warning("%s exists; recording to %s instead", p, candidate)
    return str(candidate)


def run_record(args: argparse.Namespace) -> int:
    topics = args.topics or [t for t, s in services.SERVICES.items() if s.recorded]
    for topic in topics:
        services.service(topic)
    if args.chunk_size <= 0 or args.flush_s <= 0:
        raise ConfigError("--chunk-size and --flush-s must be positive")
    out = _unused_path(args.out or time.strftime("recording-%Y%m%d-%H%M%S.mcap"))
    overrides = node.endpoint_overrides(args)
    endpoints = {t: services.endpoint(t, overrides) for t in topics}
    shutdown = node.ShutdownFlag()
    with RecordingWriter(
        out,
        chunk_size=args.chunk_size,
        compression=args.compression,
        metadata={"topics": ",".join(topics), "command": " ".join(sys.argv)},
    ) as writer:
        views = None
        if args.foxglove:
            # Imported only when asked for: it loads the Foxglove SDK.
            from fusion.logs.foxglove import FoxgloveChannels

            views = FoxgloveChannels(writer)
        recorder = Recorder.for_topics(writer, topics, endpoints, args.queue_size, views)
        try:
            log.info("recording %s to %s", ",".join(topics), out)
            stats = node.StatsLine("recorder", args.stats_period_s, recorder.summary_line)
            stop_ns = (
                time.monotonic_ns() + int(args.duration_s * 1e9) if args.duration_s > 0 else None
            )
            next_flush_ns = time.monotonic_ns() + int(args.flush_s * 1e9)
            while not shutdown:
                recorder.poll(100)
                now_ns = time.monotonic_ns()
                if now_ns >= next_flush_ns:
                    writer.flush()
                    next_flush_ns = now_ns + int(args.flush_s * 1e9)
                stats.tick(now_ns)
                if stop_ns is not None and now_ns >= stop_ns:
                    break
            recorder.drain()
        finally:
            recorder.close()
    log.info("recorded %s: %s", out, recorder.summary_line())
    log.info("recorder counters at close: %s", json.dumps(recorder.counters(), sort_keys=True))
    if views is not None:
        log.info(
            "view channels written: %s; messages not shown: %s",
            json.dumps(writer.view_counts, sort_keys=True),
            json.dumps(dict(views.converter.skipped), sort_keys=True),
        )
    return 0


# -- recover -------------------------------------------------------------------------------


def add_recover_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="damaged recording")
    parser.add_argument("dst", help="new recording to write")


def run_recover(args: argparse.Namespace) -> int:
    counts = recover(args.src, args.dst)
    total = sum(counts.values())
    print(
        f"recovered {total} messages into {args.dst}: "
        + ", ".join(f"{t} {n}" for t, n in counts.items())
    )
    return 0
