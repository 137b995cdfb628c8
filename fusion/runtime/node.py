"""What every node process shares: arguments, input health, shutdown and periodic stats.

A node file builds its inputs and outputs and runs a loop; this module holds the rest:

- `add_common_arguments` / `endpoint_overrides`: the flags every node takes (``--endpoint
  topic=URL``, ``--stats-period-s``, ``--log-level``, ``--curve-keys DIR``).
- `Inputs`: a set of subscribers polled together, with per-input health (alive, on rate, valid)
  kept as data, as openpilot's ``SubMaster`` does. An output built from an input that is not
  healthy must be marked so by the node.
- `ShutdownFlag`: SIGINT/SIGTERM set a flag; loops check it and close their sockets cleanly.
- `run_command`: a ``fusion`` sub-command run as a node process (the player and recorder nodes).
- `StatsLine`: a periodic one-line summary (latency comes from `fusion.core.latency`); its
  `tick`, called from every node's loop, is also the node's heartbeat
  (`fusion.runtime.heartbeat`), which the launcher's watchdog reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import zmq

from fusion.errors import FusionError
from fusion.runtime import heartbeat
from fusion.runtime.security import CurveKeysAction
from fusion.runtime.transport import SubscriberStats
from fusion.wire import services
from fusion.wire.messages import Message

log = logging.getLogger(__name__)

#: An input is alive while its last message is younger than this many nominal periods.
ALIVE_PERIODS = 5.0
#: Alive is also granted for at least this long, so a 1 Hz topic is not flagged dead at 1.1 s.
MIN_ALIVE_TIMEOUT_S = 0.5
#: An input is on rate when its measured rate is within this fraction of the nominal rate.
RATE_TOLERANCE = 0.5
RATE_WINDOW = 20


class SubscriberLike(Protocol):
    topic: str
    latest_only: bool
    stats: SubscriberStats
    socket: zmq.Socket | None

    def recv(self, timeout_ms: int | None = 0) -> Message | None: ...

    def close(self) -> None: ...


Validator = Callable[[Message], str | None]


@dataclass(frozen=True)
class InputHealth:
    alive: bool
    on_rate: bool
    valid: bool
    rate_hz: float
    age_ms: float
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.alive and self.valid


class InputMonitor:
    """Health of one input from the messages it delivered."""

    def __init__(self, topic: str, nominal_rate_hz: float) -> None:
        self.topic = topic
        self.nominal_rate_hz = nominal_rate_hz
        self.alive_timeout_ns = int(max(ALIVE_PERIODS / nominal_rate_hz, MIN_ALIVE_TIMEOUT_S) * 1e9)
        self._arrivals_ns: deque[int] = deque(maxlen=RATE_WINDOW)
        self.valid = True
        self.problem = ""
        self.invalid_count = 0

    def observe(self, now_ns: int, problem: str | None) -> None:
        self._arrivals_ns.append(now_ns)
        self.valid = problem is None
        if problem is not None:
            self.invalid_count += 1
            self.problem = problem

    def health(self, now_ns: int) -> InputHealth:
        if not self._arrivals_ns:
            return InputHealth(False, False, False, 0.0, float("inf"), "no message yet")
        age_ns = now_ns - self._arrivals_ns[-1]
        alive = age_ns <= self.alive_timeout_ns
        rate = 0.0
        if len(self._arrivals_ns) >= 2:
            span_ns = self._arrivals_ns[-1] - self._arrivals_ns[0]
            rate = (len(self._arrivals_ns) - 1) / (span_ns / 1e9) if span_ns > 0 else float("inf")
        on_rate = (
            alive and abs(rate - self.nominal_rate_hz) <= RATE_TOLERANCE * self.nominal_rate_hz
        )
        problem = "" if alive else f"silent for {age_ns / 1e6:.0f} ms"
        if not self.valid:
            problem = self.problem
        return InputHealth(alive, on_rate, self.valid, rate, age_ns / 1e6, problem)


class Inputs:
    """Subscribers polled together, each with an `InputMonitor`.

    `poll` waits up to `timeout_ms` for any input, then returns what each delivered: the newest
    message of a latest-only input, every queued message of a queued one (up to `max_batch`).
    `validators` may check a message's content (return a problem string, or None when fine).
    `quiet` inputs are not sensors (a replay's control): their silence is no problem.
    """

    def __init__(
        self,
        subscribers: Mapping[str, SubscriberLike],
        *,
        validators: Mapping[str, Validator] | None = None,
        max_batch: int = 64,
        quiet: tuple[str, ...] = (),
    ) -> None:
        self.subscribers = dict(subscribers)
        self.validators = dict(validators or {})
        self.quiet = set(quiet)
        self.max_batch = max_batch
        self.monitors = {
            name: InputMonitor(name, services.service(sub.topic).rate_hz)
            for name, sub in self.subscribers.items()
        }
        self._poller = zmq.Poller()
        self._pollable = all(sub.socket is not None for sub in self.subscribers.values())
        if self._pollable:
            for sub in self.subscribers.values():
                self._poller.register(sub.socket, zmq.POLLIN)

    def poll(self, timeout_ms: int = 100) -> dict[str, list[Message]]:
        if self._pollable and self.subscribers:
            self._poller.poll(timeout_ms)
        out: dict[str, list[Message]] = {}
        for name, sub in self.subscribers.items():
            got = []
            while len(got) < self.max_batch and (msg := sub.recv(0)) is not None:
                self._observe(name, msg)
                got.append(msg)
                if sub.latest_only:
                    break
            if got:
                out[name] = got
        return out

    def _observe(self, name: str, msg: Message) -> None:
        validator = self.validators.get(name)
        problem = None
        if validator is not None:
            try:
                problem = validator(msg)
            except Exception as exc:  # a validator must never take the node down
                problem = f"validator failed: {exc!r}"
        self.monitors[name].observe(time.monotonic_ns(), problem)

    def health(self, name: str, now_ns: int | None = None) -> InputHealth:
        return self.monitors[name].health(time.monotonic_ns() if now_ns is None else now_ns)

    def problems(self, now_ns: int | None = None) -> str:
        """The inputs that are not healthy, as one line for a stats line ("" when all are):
        silent, invalid, or off their nominal rate."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        found = []
        for name, monitor in self.monitors.items():
            if name in self.quiet:
                continue
            h = monitor.health(now_ns)
            if not h.ok:
                found.append(f"{name} {h.problem}")
            elif not h.on_rate:
                found.append(f"{name} at {h.rate_hz:.1f} Hz of {monitor.nominal_rate_hz:g}")
        return "; ".join(found)

    def counters(self) -> dict[str, dict[str, object]]:
        """Per input: the subscriber's counters and details (reconnects, senders forgotten,
        malformed messages by reason) and ``invalid`` (what its validator flagged)."""
        return {
            name: {
                **sub.stats.as_dict(),
                **sub.stats.details(),
                "invalid": self.monitors[name].invalid_count,
            }
            for name, sub in self.subscribers.items()
        }

    def close(self) -> None:
        """Close every subscriber and log the final per-input counters as one JSON line."""
        log.info("input counters at close: %s", json.dumps(self.counters(), sort_keys=True))
        for sub in self.subscribers.values():
            sub.close()


class ShutdownFlag:
    """Set by SIGINT or SIGTERM (installed on construction in the main thread)."""

    def __init__(self, install: bool = True) -> None:
        self._event = threading.Event()
        self.signal_name = ""
        if install and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)


class StatsLine:
    """Logs one summary line every `period_s` (0 disables): the node's heartbeat and what
    `summary()` returns. `tick` beats the heartbeat: call it on every pass of the loop."""

    def __init__(self, name: str, period_s: float, summary: Callable[[], str]) -> None:
        self.name = name
        self.period_ns = int(period_s * 1e9)
        self.summary = summary
        self._next_ns = time.monotonic_ns() + self.period_ns

    def tick(self, now_ns: int | None = None) -> None:
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        heart = heartbeat.this_process()
        heart.beat(now_ns)
        if self.period_ns > 0 and now_ns >= self._next_ns:
            self._next_ns = now_ns + self.period_ns
            log.info("[%s] %s; %s", self.name, heart.summary(), self.summary())


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="TOPIC=URL",
        help="override a topic's endpoint (ipc:///path or tcp://host:port); repeatable",
    )
    parser.add_argument(
        "--stats-period-s", type=float, default=5.0, help="stats line period, 0 = off"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")
    parser.add_argument(
        "--curve-keys",
        action=CurveKeysAction,
        metavar="DIR",
        help="CurveZMQ key folder from `fusion keys` for tcp:// endpoints "
        "(same as FUSION_CURVE_DIR=DIR)",
    )


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def endpoint_overrides(args: argparse.Namespace) -> dict[str, str]:
    return services.parse_endpoint_overrides(getattr(args, "endpoint", None))


def run_command(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
) -> int:
    """Run a ``fusion`` sub-command (its `add_arguments` and `run`) as a node process: parse
    `argv`, set up logging, and turn a `FusionError` into one line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return run(args)
    except FusionError as exc:
        print(f"{prog.rpartition('.')[2]}: error: {exc}", file=sys.stderr)
        return 2
