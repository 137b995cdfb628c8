"""The player: publishes a recording's messages again, on time, faster, or in lock-step.

`Player` reads a `RecordingReader` and sends each message through a publisher per topic (a
`fusion.runtime.transport.Publisher`, or a `fusion.runtime.testing.FakePublisher` in tests). Timing
follows the MCAP log times (when the recorder received each message):

- **real time** (default): message *i* is due at ``start + (log_i - log_0) / rate``;
  ``rate`` goes from 0.1 to 10. A message found late is sent at once (never skipped) and the
  lateness is counted.
- **max speed**: no waiting at all.
- **lock-step**: after each ``camera`` message the player waits (up to `lockstep_timeout_s`,
  counting timeouts) for a `Detections` message on ``detections`` whose
  ``source_seqs["camera"]`` is the ``seq`` it just sent; answers to older frames are discarded.
  Every other topic is published, in log-time order, between camera frames. No clock is
  involved, so the same recording gives the same inputs in the same order every time:
  deterministic replays for tests and benchmarks. The player does not publish ``detections``
  itself in this mode (the consumer does).

``loop`` plays the window again and again (one mean message interval between passes);
``start_s``/``end_s`` cut a window, in seconds from the first message; ``topics`` filters.
`Player.replay` yields the re-stamped messages instead of publishing them, for consumers in the
same process (node tests, benchmarks). ``faults`` (a `fusion.logs.faults.FaultInjector`) drops,
delays, reorders, duplicates, freezes or re-stamps messages between replay and publishing.

Re-stamping: the header of each message is rebuilt, its array buffers are sent byte for byte as
recorded. ``seq`` and every field keep their recorded values except the stamps: ``capture_ns``
becomes the monotonic time the message is due in this replay (its send time in max-speed and
lock-step), ``clock`` becomes ``monotonic``, and ``trace`` is replaced by
``{"recorded_capture_ns": <the recorded capture_ns>}`` (plus ``published``, stamped by the
publisher), because stamps of the recorded run are on another run's clock. Latency measured
from ``capture_ns`` in a replay is therefore the latency from the moment a live sensor would have
delivered the message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fusion.core.ratelog import RateLimitedLog
from fusion.errors import ConfigError, CorruptRecordingError, DecodeError
from fusion.logs.faults import FaultInjector
from fusion.logs.reader import RecordedMessage, RecordingReader
from fusion.runtime import heartbeat
from fusion.wire.messages import Detections, Message, restamp

log = logging.getLogger(__name__)

MIN_RATE = 0.1
MAX_RATE = 10.0
#: The topic whose messages the lock-step consumer answers, and the topic of its answers.
LOCKSTEP_TOPIC = "camera"
ANSWER_TOPIC = "detections"
DEFAULT_LOCKSTEP_TIMEOUT_S = 2.0
#: Pause between loop passes of a window holding a single message.
LOOP_GAP_NS = 50_000_000
#: A long wait for the next message is cut into slices of this, each beating the heartbeat.
HEARTBEAT_SLICE_NS = 500_000_000


class PublisherLike(Protocol):
    def send(self, msg: Message) -> None: ...


class SubscriberLike(Protocol):
    def recv(self, timeout_ms: int | None = 0) -> Message | None: ...


@dataclass
class PlayStats:
    """What a replay did so far (the progress line prints it)."""

    published: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    position_s: float = 0.0
    duration_s: float = 0.0
    #: how far behind schedule the latest message was sent, and the worst so far (real time)
    late_ms: float = 0.0
    max_late_ms: float = 0.0
    lockstep_answers: int = 0
    lockstep_timeouts: int = 0
    #: recorded messages that did not decode (skipped, logged)
    undecodable: int = 0
    damage: str = ""

    def line(self) -> str:
        text = (
            f"pass {self.passes} {self.position_s:7.2f}/{self.duration_s:.2f} s "
            f"published {self.published} (late {self.late_ms:.1f} ms, max {self.max_late_ms:.1f})"
        )
        if self.lockstep_answers or self.lockstep_timeouts:
            text += f" answers {self.lockstep_answers} timeouts {self.lockstep_timeouts}"
        return text


class Player:
    """Publishes a recording; see the module docstring for modes and re-stamping."""

    def __init__(
        self,
        reader: RecordingReader,
        publishers: Mapping[str, PublisherLike] | None = None,
        *,
        rate: float = 1.0,
        max_speed: bool = False,
        lockstep: bool = False,
        answers: SubscriberLike | None = None,
        lockstep_timeout_s: float = DEFAULT_LOCKSTEP_TIMEOUT_S,
        loop: bool = False,
        start_s: float = 0.0,
        end_s: float | None = None,
        topics: Iterable[str] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        faults: FaultInjector | None = None,
    ) -> None:
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ConfigError(f"rate must be between {MIN_RATE} and {MAX_RATE}, got {rate}")
        if lockstep and answers is None:
            raise ConfigError(f"lock-step needs a subscriber to {ANSWER_TOPIC!r}")
        if start_s < 0 or (end_s is not None and end_s <= start_s):
            raise ConfigError(f"need 0 <= start < end, got start {start_s} s, end {end_s} s")
        self.reader = reader
        self.publishers = dict(publishers or {})
        self.topics = self._choose_topics(topics, lockstep)
        self.rate = rate
        self.timed = not (max_speed or lockstep)
        self.lockstep = lockstep
        self.answers = answers
        self.lockstep_timeout_ns = int(lockstep_timeout_s * 1e9)
        self.loop = loop
        self.start_ns = reader.start_ns + int(start_s * 1e9)
        self.end_ns = None if end_s is None else reader.start_ns + int(end_s * 1e9)
        self.clock_ns = clock_ns
        self.faults = faults
        self.stats = PlayStats(
            duration_s=((self.end_ns or reader.end_ns) - self.start_ns) / 1e9,
        )
        self._stop = threading.Event()
        self._log = RateLimitedLog(log)

    def _choose_topics(self, topics: Iterable[str] | None, lockstep: bool) -> set[str]:
        recorded = set(self.reader.topics)
        if topics is None:
            chosen = recorded - ({ANSWER_TOPIC} if lockstep else set())
        else:
            chosen = set(topics)
            unknown = chosen - recorded
            if unknown:
                raise ConfigError(
                    f"topics {sorted(unknown)} are not in {self.reader.path}; "
                    f"it has {sorted(recorded)}"
                )
        if lockstep and ANSWER_TOPIC in chosen:
            raise ConfigError(
                f"in lock-step the consumer publishes {ANSWER_TOPIC!r}; do not replay it"
            )
        return chosen

    def stop(self) -> None:
        """Ask `run` to return after the message in progress (thread- and signal-safe)."""
        self._stop.set()

    def replay(self) -> Iterator[tuple[str, Message]]:
        """Each message of the window as ``(topic, message)``, re-stamped, when it falls due (at
        once when untimed); with ``loop``, pass after pass until `stop`. `run` publishes what
        this yields; an in-process consumer (a node under test) can iterate it directly, which
        is synchronous and so as deterministic as lock-step."""
        offset_ns = self.clock_ns() - self.start_ns  # replay clock = log time + offset (rate 1)
        while not self._stop.is_set():
            self.stats.passes += 1
            first_log_ns = last_log_ns = 0
            count = 0
            try:
                for rec in self.reader.messages(self.topics, self.start_ns, self.end_ns):
                    due_ns = self._wait_until_due(rec, offset_ns)
                    if due_ns is None:
                        return
                    first_log_ns = rec.log_time_ns if count == 0 else first_log_ns
                    last_log_ns = rec.log_time_ns
                    count += 1
                    self.stats.published += 1
                    self.stats.per_topic[rec.topic] = self.stats.per_topic.get(rec.topic, 0) + 1
                    self.stats.position_s = (rec.log_time_ns - self.start_ns) / 1e9
                    try:
                        msg = rec.decode()
                    except DecodeError as exc:  # recorded bytes that are not a message
                        self.stats.undecodable += 1
                        self._log.warning("undecodable", f"{rec.topic}: skipped: {exc}")
                        continue
                    yield rec.topic, restamp(msg, due_ns)
                    if self._stop.is_set():
                        return
            except CorruptRecordingError as exc:
                if not self.stats.damage:
                    log.error("%s (played every intact chunk)", exc)
                self.stats.damage = str(exc)
            if not self.loop or count == 0:
                return
            # The next pass starts one mean message interval after this one's last message.
            span_ns = last_log_ns - first_log_ns
            gap_ns = span_ns // (count - 1) if count > 1 else LOOP_GAP_NS
            offset_ns += int((span_ns + gap_ns) / self.rate)

    def run(
        self,
        on_progress: Callable[[PlayStats], None] | None = None,
        progress_period_s: float = 0.5,
    ) -> PlayStats:
        """Publish until the end (or, with ``loop``, until `stop`); returns the stats.
        `on_progress` is called with the stats at most every `progress_period_s`."""
        missing = self.topics - set(self.publishers)
        if missing:
            raise ConfigError(f"no publisher for recorded topics {sorted(missing)}")
        next_progress_ns = self.clock_ns()
        stream = self.replay() if self.faults is None else self.faults.apply(self.replay())
        for topic, msg in stream:
            heartbeat.beat()
            self.publishers[topic].send(msg)
            if not self.timed:
                time.sleep(0)  # untimed, still let a consumer in this process take its turn
            if self.lockstep and topic == LOCKSTEP_TOPIC:
                self._await_answer(msg.seq)
            if on_progress is not None and self.clock_ns() >= next_progress_ns:
                next_progress_ns = self.clock_ns() + int(progress_period_s * 1e9)
                on_progress(self.stats)
        if on_progress is not None:
            on_progress(self.stats)
        return self.stats

    def _wait_until_due(self, rec: RecordedMessage, offset_ns: int) -> int | None:
        """Sleep until `rec` is due; its due time (None if stopped meanwhile)."""
        now_ns = self.clock_ns()
        if not self.timed:
            return now_ns
        due_ns = self.start_ns + offset_ns + int((rec.log_time_ns - self.start_ns) / self.rate)
        wait_ns = due_ns - now_ns
        while wait_ns > 0:  # in slices, beating: a recording may pause for minutes
            step_ns = min(wait_ns, HEARTBEAT_SLICE_NS)
            if self._stop.wait(step_ns / 1e9):
                return None
            heartbeat.beat()
            wait_ns = min(wait_ns - step_ns, due_ns - self.clock_ns())
        self.stats.late_ms = max(0.0, (self.clock_ns() - due_ns) / 1e6)
        self.stats.max_late_ms = max(self.stats.max_late_ms, self.stats.late_ms)
        return due_ns

    def _await_answer(self, seq: int) -> None:
        assert self.answers is not None
        deadline_ns = time.monotonic_ns() + self.lockstep_timeout_ns
        while not self._stop.is_set():
            remaining_ms = (deadline_ns - time.monotonic_ns()) // 1_000_000
            if remaining_ms <= 0:
                break
            answer = self.answers.recv(min(int(remaining_ms), 100))
            heartbeat.beat()
            if isinstance(answer, Detections) and answer.source_seqs.get(LOCKSTEP_TOPIC) == seq:
                self.stats.lockstep_answers += 1
                return
        if not self._stop.is_set():
            self.stats.lockstep_timeouts += 1
            log.warning(
                "lock-step: no %s for %s seq %d within %.1f s (%d timeouts)",
                ANSWER_TOPIC,
                LOCKSTEP_TOPIC,
                seq,
                self.lockstep_timeout_ns / 1e9,
                self.stats.lockstep_timeouts,
            )
