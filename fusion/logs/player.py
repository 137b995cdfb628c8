"""The player: publishes a recording's messages again, on time, faster, or in lock-step.

`Player` reads a `RecordingReader` and sends each message through a publisher per topic (a
`fusion.runtime.transport.Publisher`, or a `fusion.runtime.testing.FakePublisher` in tests). The
pace follows the MCAP log times (when the recorder received each message):

- **real time** (default): message *i* is due at ``start + (log_i - log_0) / rate``;
  ``rate`` goes from 0.1 to 10. A message found late is sent at once (never skipped) and the
  lateness is counted.
- **max speed**: no waiting at all.
- **lock-step**: deterministic replays for tests and benchmarks, however fast the consumer is.
  The player waits for a `Detections` message on ``detections`` answering each camera frame
  (``source_seqs["camera"]`` is its ``seq``; each radar scan when no camera is replayed), up to
  `lockstep_timeout_s`, counting timeouts. Before it waits for a frame's answer it has sent, in
  log order, every message whose capture time is at most the frame's plus `lockstep_window_ms`
  (the fusion node's pairing slop, 80 ms by default), so the consumer holds every scan that may
  pair with the frame; then it publishes a `ReplayControl` step on ``replay_control`` listing
  the topics it sent since the previous step, in send order, and promising that every message
  captured up to ``sent_until_ns`` has been sent. A consumer that takes its inputs in that order
  and decides only at steps (the fusion node in ``--lockstep``) computes the same outputs on
  any machine. Up to `lockstep_depth` frames may be stepped but not yet answered, so the
  consumer works on one frame while the player reads and sends the next. The player does not
  publish ``detections`` in this mode (the consumer does).

``loop`` plays the window again and again (one mean message interval between passes);
``start_s``/``end_s`` cut a window, in seconds from the first message; ``topics`` filters.
`Player.replay` yields the re-stamped messages instead of publishing them, and
`Player.lockstep_stream` the lock-step sequence of messages and steps, for consumers in the same
process (node tests, benchmarks, `tests/process_replay.py`). ``faults`` (a
`fusion.logs.faults.FaultInjector`) drops, delays, reorders, duplicates, freezes or re-stamps
messages between replay and publishing.

Re-stamping keeps the sensors' timing: the header of each message is rebuilt, its array buffers
are sent byte for byte as recorded. ``seq`` and every field keep their recorded values except
the stamps: ``capture_ns`` becomes the recorded capture time plus one offset for the whole
replay, so every recorded interval between messages is kept (between sensors too), whatever the
pace; ``clock`` becomes ``monotonic``, and ``trace`` is replaced by ``{"recorded_capture_ns":
<the recorded capture_ns>}`` (plus ``published``, stamped by the publisher), because stamps of
the recorded run are on another run's clock. The offset puts the first message's log time at the
moment the replay starts, so at rate 1 a message is stamped when a live sensor would have
captured it (its recorded transport delay before it) and latency measured from ``capture_ns``
is the latency a live run would have had. A loop's next pass continues the stamps one interval
after the previous pass's last. At other rates, at max speed and in lock-step the stamps keep
their spacing and drift from the clock; the `ReplayControl` messages the player sends (at the
start of each pass and every second) tell a consumer the pace (``rate``, 0 when untimed) and
the moment the replay started, so it can tell a late message from a slow replay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fusion.core.ratelog import RateLimitedLog
from fusion.errors import ConfigError, CorruptRecordingError, DecodeError
from fusion.logs.faults import FaultInjector
from fusion.logs.reader import RecordingReader
from fusion.perception.sync import DEFAULT_SLOP_MS
from fusion.runtime import heartbeat
from fusion.runtime.testing import FakeSubscriber
from fusion.wire.messages import SENT_EVERYTHING_NS, Detections, Message, ReplayControl, restamp

log = logging.getLogger(__name__)

MIN_RATE = 0.1
MAX_RATE = 10.0
#: The topic whose messages the lock-step consumer answers (the radar's when no camera is
#: replayed), the topic of its answers, and the topic of the player's control messages.
LOCKSTEP_TOPIC = "camera"
LOCKSTEP_FALLBACK_TOPIC = "radar"
ANSWER_TOPIC = "detections"
CONTROL_TOPIC = "replay_control"
#: A lock-step answer that takes this long means the consumer is stuck or gone (the fusion node
#: needs 20-100 ms a frame on 2 busy cores).
DEFAULT_LOCKSTEP_TIMEOUT_S = 20.0
DEFAULT_LOCKSTEP_DEPTH = 2
#: Lock-step reads ahead until every topic has a message captured past a window, and this much
#: (capture time) further, before deciding what the window holds, so a message logged a little
#: after messages captured later is still sent in its window...
LOCKSTEP_LOOKAHEAD_NS = 500_000_000
#: ... but never more than this many messages (a topic silent for the rest of a recording must
#: not make it read the whole file); the window's promise then assumes that no message is logged
#: after this many messages captured later than it.
LOCKSTEP_LOOKAHEAD_MAX = 256
#: A lock-step step is also sent after this many messages without one (a replay without the
#: answered topic must not make the consumer hold everything it received).
LOCKSTEP_MAX_STEP_MESSAGES = 64
#: Pause between loop passes of a window holding a single message.
LOOP_GAP_NS = 50_000_000
#: Real-time and max-speed replays repeat their `ReplayControl` this often, for late joiners.
CONTROL_PERIOD_NS = 1_000_000_000
#: A long wait for the next message is cut into slices of this, each beating the heartbeat.
HEARTBEAT_SLICE_NS = 500_000_000


def recorded_topics(path: str, wanted: Iterable[str]) -> tuple[str, ...]:
    """Those of `wanted` that the recording at `path` holds, in `wanted`'s order: what a graph
    built for any drive asks its player to replay (an imported drive may lack some topics: the
    Astyx import has no ego motion, and the player refuses a topic the recording does not have)."""
    with RecordingReader(path) as reader:
        have = reader.topics
    return tuple(t for t in wanted if t in have)


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
    lockstep_steps: int = 0
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

    @classmethod
    def in_process(
        cls,
        reader: RecordingReader,
        *,
        topics: Iterable[str] | None = None,
        end_s: float | None = None,
        faults: FaultInjector | None = None,
    ) -> Player:
        """A lock-step player whose `lockstep_stream` feeds a pipeline in this process (training
        samples, process replay, fleet tasks): what ``fusion play --lockstep`` publishes, in
        order, steps included, with nobody to answer and stamps on a clock that starts at 0
        (recorded capture time minus the window's start), so the stream is the same on every
        run and machine."""
        return cls(
            reader,
            lockstep=True,
            answers=FakeSubscriber(ANSWER_TOPIC),  # nobody answers: only the stream is used
            topics=topics,
            end_s=end_s,
            clock_ns=lambda: 0,
            faults=faults,
        )

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
        lockstep_window_ms: float = DEFAULT_SLOP_MS,
        lockstep_depth: int = DEFAULT_LOCKSTEP_DEPTH,
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
        if lockstep_window_ms < 0 or lockstep_depth < 1:
            raise ConfigError(
                f"need a lock-step window >= 0 ms and depth >= 1, got {lockstep_window_ms} ms "
                f"and {lockstep_depth}"
            )
        self.reader = reader
        self.publishers = dict(publishers or {})
        self.control = self.publishers.pop(CONTROL_TOPIC, None)
        self.topics = self._choose_topics(topics, lockstep)
        self.rate = rate
        self.timed = not (max_speed or lockstep)
        self.lockstep = lockstep
        self.answers = answers
        self.lockstep_timeout_ns = int(lockstep_timeout_s * 1e9)
        self.lockstep_window_ns = int(lockstep_window_ms * 1e6)
        self.lockstep_depth = lockstep_depth
        self.answered_topic = (
            LOCKSTEP_TOPIC if LOCKSTEP_TOPIC in self.topics else (LOCKSTEP_FALLBACK_TOPIC)
        )
        self.loop = loop
        self.start_ns = reader.start_ns + int(start_s * 1e9)
        self.end_ns = None if end_s is None else reader.start_ns + int(end_s * 1e9)
        self.clock_ns = clock_ns
        self.faults = faults
        if faults is not None and self.timed:
            faults.wait_until = self._sleep_until_stamp_due
        self.stats = PlayStats(
            duration_s=((self.end_ns or reader.end_ns) - self.start_ns) / 1e9,
        )
        self._stop = threading.Event()
        self._origin_ns = 0  # the monotonic time the replay started: stamp = recorded + offset
        self._control_seq = 0
        self._next_control_ns = 0
        self._in_flight: Counter[int] = Counter()  # answered-topic seqs sent, not yet awaited
        self._answers_seen: Counter[int] = Counter()  # answers to them received meanwhile
        self._log = RateLimitedLog(log)

    def _choose_topics(self, topics: Iterable[str] | None, lockstep: bool) -> set[str]:
        recorded = set(self.reader.topics)
        if topics is None:
            chosen = recorded - ({ANSWER_TOPIC} if lockstep else set()) - {CONTROL_TOPIC}
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

    # ---- the stream ---------------------------------------------------------------------

    def replay(self) -> Iterator[tuple[str, Message]]:
        """Each message of the window as ``(topic, message)``, re-stamped, when it falls due (at
        once when untimed); with ``loop``, pass after pass until `stop`. `run` publishes what
        this yields (after the faults); an in-process consumer (a node under test) can iterate
        it directly, which is synchronous and so as deterministic as lock-step."""
        self._origin_ns = self.clock_ns()
        # Replay time: recorded time since the window's start, continued across passes. A
        # message is due at origin + replay time / rate and stamped recorded capture + offset.
        pass_start_ns = 0
        while not self._stop.is_set():
            self.stats.passes += 1
            offset_ns = self._origin_ns - self.start_ns + pass_start_ns
            first_log_ns = last_log_ns = 0
            count = 0
            try:
                for rec in self.reader.messages(self.topics, self.start_ns, self.end_ns):
                    replay_ns = pass_start_ns + rec.log_time_ns - self.start_ns
                    if not self._wait_until_due(replay_ns):
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
                    yield rec.topic, restamp(msg, msg.capture_ns + offset_ns)
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
            pass_start_ns += span_ns + gap_ns

    def stream(self) -> Iterator[tuple[str, Message]]:
        """`replay` with the faults applied: what `run` publishes, in order."""
        return self.replay() if self.faults is None else self.faults.apply(self.replay())

    def lockstep_stream(self) -> Iterator[tuple[str, Message]]:
        """The lock-step sequence: `stream`'s messages in order, with a `ReplayControl` step
        (topic ``replay_control``) after each window (see the module docstring). Each step's
        `ReplayControl.order` names the messages since the previous one. `run` publishes this in
        lock-step and waits for answers after each step; `tests/process_replay.py` feeds it to
        the fusion node's logic in-process."""
        window = _Windows(self.stream(), self.answered_topic, self.lockstep_window_ns)
        order: list[str] = []
        for item in window:
            if item is None:
                yield CONTROL_TOPIC, self._control(order, window.sent_until_ns, False)
                order = []
                continue
            order.append(item[0])
            yield item
            if len(order) >= LOCKSTEP_MAX_STEP_MESSAGES:
                yield CONTROL_TOPIC, self._control(order, window.promise_ns(), False)
                order = []
        yield CONTROL_TOPIC, self._control(order, SENT_EVERYTHING_NS, True)

    def _control(self, order: list[str], sent_until_ns: int, final: bool) -> ReplayControl:
        self.stats.lockstep_steps += 1
        msg = ReplayControl(
            rate=0.0,
            origin_ns=self._origin_ns,
            lockstep=True,
            order=",".join(order),
            sent_until_ns=sent_until_ns,
            final=final,
            seq=self._control_seq,
            capture_ns=self.clock_ns(),
            sensor_id="player",
        )
        self._control_seq += 1
        return msg

    # ---- publishing ---------------------------------------------------------------------

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
        items = self.lockstep_stream() if self.lockstep else self.stream()
        stepped: deque[int] = deque()  # answered-topic seqs stepped, answers not yet awaited
        sent: deque[tuple[int, int]] = deque()  # (seq, capture_ns) sent, window still open
        for topic, msg in items:
            heartbeat.beat()
            if topic == CONTROL_TOPIC:
                assert isinstance(msg, ReplayControl)
                if self.control is not None:
                    self.control.send(msg)
                while sent and (
                    msg.final or sent[0][1] + self.lockstep_window_ns <= msg.sent_until_ns
                ):
                    stepped.append(sent.popleft()[0])
                limit = 0 if msg.final else self.lockstep_depth - 1
                while len(stepped) > limit and not self._stop.is_set():
                    self._await_answer(stepped.popleft())
            else:
                self._send_control_now_and_then(msg)
                self.publishers[topic].send(msg)
                if self.lockstep and topic == self.answered_topic:
                    sent.append((msg.seq, msg.capture_ns))
                    self._in_flight[msg.seq] += 1
                if not self.timed:
                    time.sleep(0)  # untimed, still let a consumer in this process take its turn
            if on_progress is not None and self.clock_ns() >= next_progress_ns:
                next_progress_ns = self.clock_ns() + int(progress_period_s * 1e9)
                on_progress(self.stats)
        if on_progress is not None:
            on_progress(self.stats)
        return self.stats

    def _send_control_now_and_then(self, msg: Message) -> None:
        """Timed and max-speed replays: a `ReplayControl` with the pace, at the start and then
        every `CONTROL_PERIOD_NS`."""
        if self.control is None or self.lockstep:
            return
        now_ns = self.clock_ns()
        if now_ns < self._next_control_ns:
            return
        self._next_control_ns = now_ns + CONTROL_PERIOD_NS
        self.control.send(
            ReplayControl(
                rate=self.rate if self.timed else 0.0,
                origin_ns=self._origin_ns,
                seq=self._control_seq,
                capture_ns=now_ns,
                sensor_id="player",
            )
        )
        self._control_seq += 1

    def _wait_until_due(self, replay_ns: int) -> bool:
        """Sleep until a message `replay_ns` into the replay is due; False if stopped."""
        if not self.timed:
            return True
        due_ns = self._origin_ns + int(replay_ns / self.rate)
        wait_ns = due_ns - self.clock_ns()
        while wait_ns > 0:  # in slices, beating: a recording may pause for minutes
            step_ns = min(wait_ns, HEARTBEAT_SLICE_NS)
            if self._stop.wait(step_ns / 1e9):
                return False
            heartbeat.beat()
            wait_ns = min(wait_ns - step_ns, due_ns - self.clock_ns())
        self.stats.late_ms = max(0.0, (self.clock_ns() - due_ns) / 1e6)
        self.stats.max_late_ms = max(self.stats.max_late_ms, self.stats.late_ms)
        return True

    def _sleep_until_stamp_due(self, capture_ns: int) -> None:
        """A fault injector's `wait_until` for timed replays: sleep until a message stamped
        `capture_ns` is due (the stamps keep the recorded spacing; the pace is ``rate``)."""
        due_ns = self._origin_ns + int((capture_ns - self._origin_ns) / self.rate)
        remaining_s = (due_ns - self.clock_ns()) / 1e9
        if remaining_s > 0:
            self._stop.wait(remaining_s)

    def _await_answer(self, seq: int) -> None:
        """Wait for the answer to the message `seq` of the answered topic. Answers to messages
        still in flight are kept for their turn; answers to nothing in flight (late ones, to a
        message that already timed out) are dropped."""
        assert self.answers is not None
        deadline_ns = time.monotonic_ns() + self.lockstep_timeout_ns
        answered = False
        while not self._stop.is_set():
            if self._answers_seen[seq] > 0:
                answered = True
                break
            remaining_ms = (deadline_ns - time.monotonic_ns()) // 1_000_000
            if remaining_ms <= 0:
                break
            answer = self.answers.recv(min(int(remaining_ms), 100))
            heartbeat.beat()
            if isinstance(answer, Detections) and self.answered_topic in answer.source_seqs:
                got = answer.source_seqs[self.answered_topic]
                if self._answers_seen[got] < self._in_flight[got]:
                    self._answers_seen[got] += 1
        self._in_flight[seq] -= 1
        self._answers_seen[seq] -= answered
        if self._in_flight[seq] <= 0:
            del self._in_flight[seq]
            self._answers_seen.pop(seq, None)
        if answered:
            self.stats.lockstep_answers += 1
        elif not self._stop.is_set():
            self.stats.lockstep_timeouts += 1
            log.warning(
                "lock-step: no %s for %s seq %d within %.1f s (%d timeouts)",
                ANSWER_TOPIC,
                self.answered_topic,
                seq,
                self.lockstep_timeout_ns / 1e9,
                self.stats.lockstep_timeouts,
            )


class _Windows:
    """Lock-step windows over a message stream: yields the messages in order, and None where a
    window closes (a step is due). A window opens at each message on `answered` (capture time
    ``c``) and closes once every message of the stream captured at or before ``c + window_ns``
    has been yielded, as far as a look-ahead of `LOCKSTEP_LOOKAHEAD_NS` past it can tell; after
    a None, `sent_until_ns` is the step's promise and `ended` whether the stream is done."""

    def __init__(
        self, stream: Iterator[tuple[str, Message]], answered: str, window_ns: int
    ) -> None:
        self._stream = iter(stream)
        self._answered = answered
        self._window_ns = window_ns
        self._buffer: deque[tuple[str, Message]] = deque()
        self._open: deque[int] = deque()  # capture times of answered messages, window open
        self._topics: set[str] = set()
        self.ended = False
        self.sent_until_ns = 0

    def __iter__(self) -> Iterator[tuple[str, Message] | None]:
        while True:
            if self._open:
                limit_ns = self._open[0] + self._window_ns
                self._fill(limit_ns)
                last = max(
                    (k for k, (_, m) in enumerate(self._buffer) if m.capture_ns <= limit_ns),
                    default=-1,
                )
                for _ in range(last + 1):
                    yield self._take()
                self.sent_until_ns = max(self.promise_ns(), limit_ns)
                while self._open and self._open[0] + self._window_ns <= self.sent_until_ns:
                    self._open.popleft()
                yield None
                continue
            if not self._buffer:
                self._fill(None)
                if not self._buffer:
                    return
            yield self._take()

    def promise_ns(self) -> int:
        """The latest capture time up to which everything has been yielded, as far as the
        look-ahead shows (`SENT_EVERYTHING_NS` when the stream is done)."""
        firsts: dict[str, int] = {}
        for topic, msg in self._buffer:
            firsts[topic] = min(firsts.get(topic, msg.capture_ns), msg.capture_ns)
        if not firsts:
            return SENT_EVERYTHING_NS if self.ended else self.sent_until_ns
        return min(firsts.values()) - 1

    def _take(self) -> tuple[str, Message]:
        topic, msg = self._buffer.popleft()
        if topic == self._answered:
            self._open.append(msg.capture_ns)
        return topic, msg

    def _fill(self, limit_ns: int | None) -> None:
        """Read ahead: one message when `limit_ns` is None; else until every topic seen so far
        has a buffered message captured after `limit_ns` and the buffer reaches
        `LOCKSTEP_LOOKAHEAD_NS` past it (or the stream ends, or `LOCKSTEP_LOOKAHEAD_MAX`)."""
        while not self.ended:
            if limit_ns is None:
                if self._buffer:
                    return
            elif len(self._buffer) >= LOCKSTEP_LOOKAHEAD_MAX or self._covered(limit_ns):
                return
            try:
                topic, msg = next(self._stream)
            except StopIteration:
                self.ended = True
                return
            self._topics.add(topic)
            self._buffer.append((topic, msg))

    def _covered(self, limit_ns: int) -> bool:
        after = {t for t, m in self._buffer if m.capture_ns > limit_ns}
        newest = max((m.capture_ns for _, m in self._buffer), default=limit_ns)
        return after >= self._topics and newest > limit_ns + LOCKSTEP_LOOKAHEAD_NS
