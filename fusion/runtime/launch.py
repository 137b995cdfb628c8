"""Start a checked graph of node processes, supervise them, and stop them cleanly.

`run_graph` checks the graph's wiring first (`fusion.runtime.graph.check_graph`; ``fusion launch
--check GRAPH.yaml`` only checks and prints it) and refuses a graph that does not check. Each node
runs as its own process with its output in ``LOG_DIR/<name>.log``. A node that dies is restarted
with exponential backoff (0.5 s doubling to 8 s), and the restart is counted and logged. A node
that stops answering without dying (a hung loop, a deadlock, SIGSTOP) is found by its heartbeat
(`fusion.runtime.heartbeat`, written to ``LOG_DIR/<name>.heartbeat``): once it has beaten, a
node silent for its ``watchdog_s`` is killed (SIGKILL) and restarted the same way, counted as a
hang. Ctrl-C (or SIGTERM) stops the nodes in reverse start order with SIGINT, then SIGKILL after
a grace period. A live status table shows, per node, status, restarts, hangs, downtime, the age
of its last heartbeat and how it last ended; per topic, rate, lost/rejected messages, capture ->
receive latency p50/p99, budget misses and outputs flagged by the sensor-health score, from a
subscriber the launcher keeps on each topic.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fusion.core.latency import LatencyHistogram
from fusion.errors import ConfigError
from fusion.runtime import heartbeat
from fusion.runtime.graph import GraphSpec, NodeSpec, check_graph, format_check, load_graph
from fusion.runtime.node import ShutdownFlag, SubscriberLike
from fusion.runtime.transport import Subscriber
from fusion.wire import services
from fusion.wire.messages import Detections

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 8.0
#: A node that ran this long before dying is considered healthy again: its backoff resets.
BACKOFF_RESET_AFTER_S = 10.0


@dataclass
class NodeState:
    spec: NodeSpec
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start_at: float = 0.0
    backoff_s: float = BACKOFF_START_S
    last_exit: int | None = None
    finished: bool = False
    down_since: float | None = None
    downtime_s: float = 0.0
    #: times the watchdog found it hung (killed and restarted)
    hangs: int = 0
    #: monotonic ns of the running process's last heartbeat (None: not beaten yet)
    last_beat_ns: int | None = None
    killed_hung: bool = False
    #: whether the last exit was the watchdog's kill
    last_exit_hung: bool = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Launcher:
    """Runs a `GraphSpec`: `start()`, then `supervise()` repeatedly, then `stop()`."""

    def __init__(
        self, graph: GraphSpec, log_dir: str | Path = "logs", *, stop_grace_s: float = 10.0
    ) -> None:
        self.graph = graph
        self.log_dir = Path(log_dir)
        self.stop_grace_s = stop_grace_s
        self.nodes = {spec.name: NodeState(spec) for spec in graph.nodes}
        self.finished = False
        #: Stopped by SIGINT/SIGTERM (`run_graph`), not by a finishing node or a time limit.
        self.interrupted = False
        #: Monotonic time simulated producers map their time 0 to, so they stay aligned.
        self.epoch_ns = time.monotonic_ns() + int(graph.epoch_delay_s * 1e9)

    def environment(self, spec: NodeSpec) -> dict[str, str]:
        env = dict(os.environ)
        if self.graph.ipc_dir is not None:
            os.makedirs(self.graph.ipc_dir, mode=0o700, exist_ok=True)
            env["FUSION_IPC_DIR"] = self.graph.ipc_dir
        env.setdefault("FUSION_IPC_DIR", services.ipc_dir())
        env.setdefault("FUSION_EPOCH_NS", str(self.epoch_ns))
        for topic, url in self.graph.endpoints.items():
            env[f"FUSION_ENDPOINT_{topic.upper()}"] = url
        env.update(spec.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env[heartbeat.HEARTBEAT_FILE_ENV] = str(self.heartbeat_file(spec))
        return env

    def heartbeat_file(self, spec: NodeSpec) -> Path:
        return self.log_dir / f"{spec.name}.heartbeat"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        now = time.monotonic()
        for state in self.nodes.values():
            state.next_start_at = now + state.spec.start_delay_s

    def _spawn(self, state: NodeState) -> None:
        self.heartbeat_file(state.spec).unlink(missing_ok=True)  # the last process's
        state.last_beat_ns, state.killed_hung = None, False
        log_file = open(self.log_dir / f"{state.spec.name}.log", "ab")  # noqa: SIM115 (child owns it)
        try:
            state.process = subprocess.Popen(
                state.spec.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.environment(state.spec),
                start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the nodes
            )
        finally:
            log_file.close()
        state.started_at = time.monotonic()
        if state.down_since is not None:
            state.downtime_s += state.started_at - state.down_since
            state.down_since = None
        log.info("started %s (pid %d)", state.spec.name, state.process.pid)

    def supervise(self) -> None:
        """Start what is due, notice exits, schedule restarts. Call every ~100 ms."""
        now = time.monotonic()
        for state in self.nodes.values():
            if state.finished:
                continue
            if state.process is None:
                if now >= state.next_start_at:
                    self._spawn(state)
                continue
            code = state.process.poll()
            if code is None:
                self._watch(state)
                continue
            state.last_exit, state.last_exit_hung = code, state.killed_hung
            state.process = None
            state.down_since = now
            if state.spec.finishes_graph and (code == 0 or state.spec.restart == "never"):
                # A finishing node that will not run again ends the graph either way; a
                # failure is the caller's to report (`NodeState.last_exit`).
                if code == 0:
                    log.info("%s finished; stopping the graph", state.spec.name)
                else:
                    log.error("%s failed (exit %d); stopping the graph", state.spec.name, code)
                state.finished = True
                self.finished = True
                continue
            if state.spec.restart == "never" or (code == 0 and state.spec.restart == "on-failure"):
                log.info("%s exited with %d; not restarting", state.spec.name, code)
                state.finished = True
                continue
            if now - state.started_at > BACKOFF_RESET_AFTER_S:
                state.backoff_s = BACKOFF_START_S
            state.restarts += 1
            state.next_start_at = now + state.backoff_s
            log.warning(
                "%s exited with %s; restart #%d in %.1f s (log: %s)",
                state.spec.name,
                _describe_exit(code, state.killed_hung),
                state.restarts,
                state.backoff_s,
                self.log_dir / f"{state.spec.name}.log",
            )
            state.backoff_s = min(state.backoff_s * 2, BACKOFF_MAX_S)

    def _watch(self, state: NodeState) -> None:
        """The watchdog: kill a running node whose heartbeat stopped (it is then restarted like
        any node that died)."""
        assert state.process is not None
        beat = heartbeat.read(self.heartbeat_file(state.spec))
        if beat is not None and beat.pid == state.process.pid:
            state.last_beat_ns = beat.monotonic_ns
        if state.last_beat_ns is None or state.spec.watchdog_s <= 0 or state.killed_hung:
            return
        silent_s = (time.monotonic_ns() - state.last_beat_ns) / 1e9
        if silent_s > state.spec.watchdog_s:
            state.hangs += 1
            state.killed_hung = True
            log.warning(
                "%s stopped answering (no heartbeat for %.1f s, watchdog %.0f s); killing it "
                "to restart it (hang #%d)",
                state.spec.name,
                silent_s,
                state.spec.watchdog_s,
                state.hangs,
            )
            state.process.kill()

    def stop(self) -> None:
        """SIGINT every node in reverse start order, then SIGKILL what is left after the grace."""
        for state in reversed(list(self.nodes.values())):
            if state.running:
                state.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + self.stop_grace_s
        for state in reversed(list(self.nodes.values())):
            if state.process is None:
                continue
            try:
                state.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s did not stop in %.0f s; killing it", state.spec.name, self.stop_grace_s
                )
                state.process.kill()
                state.process.wait()
            state.last_exit = state.process.returncode
            state.process = None

    def summary_rows(self) -> list[tuple[str, str, int, str, str, str, int]]:
        """Per node: name, status, restarts, downtime, last exit, heartbeat age, hangs."""
        rows = []
        now = time.monotonic()
        now_ns = time.monotonic_ns()
        for state in self.nodes.values():
            status = "running" if state.running else ("done" if state.finished else "down")
            down = state.downtime_s + (now - state.down_since if state.down_since else 0.0)
            exit_text = (
                ""
                if state.last_exit is None
                else _describe_exit(state.last_exit, state.last_exit_hung)
            )
            beat = "-"
            if state.running and state.last_beat_ns is not None:
                beat = f"{(now_ns - state.last_beat_ns) / 1e9:.1f} s ago"
            rows.append(
                (
                    state.spec.name,
                    status,
                    state.restarts,
                    f"{down:.1f} s",
                    exit_text,
                    beat,
                    state.hangs,
                )
            )
        return rows


def _describe_exit(code: int, hung: bool = False) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{name} (hung)" if hung else name
    return f"exit {code}"


class TopicMonitor:
    """The launcher's own view of each topic: rate, losses and latency, from a subscriber."""

    def __init__(
        self,
        topics: list[str],
        endpoints: dict[str, str],
        subscribers: dict[str, SubscriberLike] | None = None,
    ) -> None:
        """Subscribe to `topics` (at `endpoints` where given), or watch `subscribers`."""
        self.subs = subscribers or {
            t: Subscriber(t, services.endpoint(t, endpoints), latest_only=False, queue_size=1000)
            for t in topics
        }
        topics = list(self.subs)
        self.counts = dict.fromkeys(topics, 0)
        self.latency = {t: LatencyHistogram() for t in topics}
        self.misses = 0
        self.health_flagged = 0  # outputs whose sensor-health score passed the model's threshold
        self.modes: dict[str, int] = {}
        self._window_start = time.monotonic()
        self._window_counts = dict.fromkeys(topics, 0)
        self.rates = dict.fromkeys(topics, 0.0)

    def poll(self) -> None:
        for topic, sub in self.subs.items():
            while (msg := sub.recv(0)) is not None:
                self.counts[topic] += 1
                self._window_counts[topic] += 1
                if msg.clock == "monotonic" and "received" in msg.trace:
                    self.latency[topic].add((msg.trace["received"] - msg.capture_ns) / 1e6)
                if isinstance(msg, Detections):
                    self.misses += msg.budget_miss
                    self.health_flagged += msg.health.get("ok", 1.0) == 0.0
                    self.modes[msg.mode] = self.modes.get(msg.mode, 0) + 1
        elapsed = time.monotonic() - self._window_start
        if elapsed >= 1.0:
            self.rates = {t: c / elapsed for t, c in self._window_counts.items()}
            self._window_counts = dict.fromkeys(self.subs, 0)
            self._window_start = time.monotonic()

    def rows(self) -> list[tuple[str, str, str, str, str, str, str]]:
        out = []
        for topic, sub in self.subs.items():
            p = self.latency[topic].percentiles()
            out.append(
                (
                    topic,
                    f"{self.rates[topic]:.1f}",
                    str(self.counts[topic]),
                    f"{sub.stats.lost}/{sub.stats.rejected}",
                    f"{p['p50']:.1f} / {p['p99']:.1f}",
                    str(self.misses) if topic == "detections" else "",
                    str(self.health_flagged) if topic == "detections" else "",
                )
            )
        return out

    def close(self) -> None:
        for sub in self.subs.values():
            sub.close()


def render_status(launcher: Launcher, monitor: TopicMonitor | None):
    from rich.console import Group
    from rich.table import Table

    nodes = Table(title=f"graph {launcher.graph.name}", expand=False)
    for col in ("node", "status", "restarts", "hangs", "downtime", "heartbeat", "last exit"):
        nodes.add_column(col)
    for name, status, restarts, down, last_exit, beat, hangs in launcher.summary_rows():
        nodes.add_row(name, status, str(restarts), str(hangs), down, beat, last_exit)
    if monitor is None:
        return nodes
    topics = Table(title="topics", expand=False)
    for col in (
        "topic",
        "Hz",
        "msgs",
        "lost/rejected",
        "latency p50/p99 ms",
        "budget misses",
        "health flagged",
    ):
        topics.add_column(col)
    for row in monitor.rows():
        topics.add_row(*row)
    return Group(nodes, topics)


def run_graph(
    graph: GraphSpec,
    *,
    log_dir: str | Path = "logs",
    status: bool = True,
    monitor_topics: list[str] | None = None,
    max_duration_s: float | None = None,
    finish_grace_s: float = 0.0,
) -> Launcher:
    """Run `graph` until a finishing node ends, SIGINT/SIGTERM, or `max_duration_s`.

    After a finishing node ends, the others get `finish_grace_s` to drain what is in flight."""
    from rich.console import Console
    from rich.live import Live

    problems = check_graph(graph)
    if problems:
        raise ConfigError(
            f"graph {graph.name} does not check; nothing was started:\n"
            + "\n".join(f"- {p}" for p in problems)
        )
    launcher = Launcher(graph, log_dir)
    shutdown = ShutdownFlag()
    topics = monitor_topics if monitor_topics is not None else ["camera", "radar", "detections"]
    endpoints = {t: services.endpoint(t, graph.endpoints, graph.ipc_dir) for t in topics}
    monitor = TopicMonitor(topics, endpoints) if topics else None
    console = Console(stderr=True)
    launcher.start()
    t0 = time.monotonic()
    try:
        live_view = (
            Live(render_status(launcher, monitor), console=console, refresh_per_second=2)
            if status
            else contextlib.nullcontext()
        )
        with live_view as live:
            while not shutdown and not launcher.finished:
                launcher.supervise()
                if monitor is not None:
                    monitor.poll()
                if live is not None:
                    live.update(render_status(launcher, monitor))
                if max_duration_s is not None and time.monotonic() - t0 > max_duration_s:
                    break
                shutdown.wait(0.05)
            grace_end = time.monotonic() + finish_grace_s
            while launcher.finished and not shutdown and time.monotonic() < grace_end:
                if monitor is not None:
                    monitor.poll()
                shutdown.wait(0.05)
    finally:
        launcher.interrupted = bool(shutdown)
        launcher.stop()
        if monitor is not None:
            monitor.close()
    console.print(render_status(launcher, monitor))
    return launcher


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="graph YAML file")
    parser.add_argument(
        "--check", action="store_true", help="check the wiring, print it, start nothing"
    )
    parser.add_argument("--log-dir", default="logs", help="folder for each node's log")
    parser.add_argument("--no-status", action="store_true", help="no live status table")
    parser.add_argument("--duration-s", type=float, default=None, help="stop after this long")


def run(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph)
    if args.check:
        problems = check_graph(graph)
        print(format_check(graph, problems))
        return 1 if problems else 0
    launcher = run_graph(
        graph, log_dir=args.log_dir, status=not args.no_status, max_duration_s=args.duration_s
    )
    if launcher.interrupted:
        return 0  # the user stopped it
    states = launcher.nodes.values()
    failed = [s.spec.name for s in states if s.last_exit not in (0, None, -2)]
    finisher_failed = any(s.spec.finishes_graph and s.last_exit not in (0, None) for s in states)
    return 1 if finisher_failed or (failed and not launcher.finished) else 0
