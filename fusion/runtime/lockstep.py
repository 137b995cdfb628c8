"""Lock-step input ordering: a consumer takes a lock-step replay's messages in the order sent.

A lock-step player (`fusion.logs.player`) publishes each topic on its own socket, so a consumer
may receive a radar scan before the camera frame sent just before it; and after each step of
the replay it publishes a `ReplayControl` on ``replay_control`` listing the topics it sent since
its previous step, in order. `StepGate` holds what arrives and releases it as the player sent
it: a step's messages in its order, then the step itself, once every message it lists has
arrived. A consumer that decides only at steps thus sees the same sequence as an in-process
replay (`fusion.logs.player.Player.lockstep_stream`), whatever its sockets delivered first.

Nothing waits forever: a step whose messages have not all arrived `timeout_s` after it is
released with what is there (the missing ones are counted in `missing` and logged; a lost
message shifts nothing, since each later step names its own messages), and messages held
`timeout_s` without any step (a player that is not in lock-step) are released in arrival order
and counted in `unstepped`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable

from fusion.core.ratelog import RateLimitedLog
from fusion.wire.messages import Message, ReplayControl

log = logging.getLogger(__name__)

#: The topic of the player's steps (the registry's ``replay_control``).
CONTROL_TOPIC = "replay_control"
#: Longest a step waits for the messages it lists (they are in flight on other sockets; a
#: message that takes this long is lost).
DEFAULT_TIMEOUT_S = 10.0


class StepGate:
    """Holds a lock-step replay's messages and releases them in the order they were sent.

    `add` every message received (a `ReplayControl` on ``replay_control`` is a step); `release`
    returns ``(topic, message)`` in send order, each step's messages followed by the step.
    """

    def __init__(
        self, timeout_s: float = DEFAULT_TIMEOUT_S, clock_ns: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self.timeout_ns = int(timeout_s * 1e9)
        self.clock_ns = clock_ns
        self.counters: Counter[str] = Counter()
        self._held: dict[str, deque[tuple[int, Message]]] = {}
        self._steps: deque[tuple[int, ReplayControl]] = deque()
        self._arrivals = 0
        self._oldest_ns: int | None = None  # arrival of the oldest message held with no step
        self._log = RateLimitedLog(log)

    @property
    def held(self) -> int:
        """Messages received and not yet released."""
        return sum(len(q) for q in self._held.values())

    def add(self, topic: str, msg: Message, now_ns: int | None = None) -> None:
        now_ns = self.clock_ns() if now_ns is None else now_ns
        if topic == CONTROL_TOPIC and isinstance(msg, ReplayControl):
            self._steps.append((now_ns, msg))
            return
        self._held.setdefault(topic, deque()).append((self._arrivals, msg))
        self._arrivals += 1
        if self._oldest_ns is None:
            self._oldest_ns = now_ns

    def release(self, now_ns: int | None = None) -> list[tuple[str, Message]]:
        """Every complete step (or timed-out one) in order, each as its messages then itself;
        messages held too long without a step, in arrival order."""
        now_ns = self.clock_ns() if now_ns is None else now_ns
        out: list[tuple[str, Message]] = []
        while self._steps:
            arrived_ns, step = self._steps[0]
            need = Counter(step.topics_sent())
            short = {t: n - len(self._held.get(t, ())) for t, n in need.items()}
            short = {t: n for t, n in short.items() if n > 0}
            if short and now_ns - arrived_ns < self.timeout_ns:
                break
            if short:
                self.counters["steps_incomplete"] += 1
                self.counters["missing"] += sum(short.values())
                self._log.warning(
                    "lockstep_missing",
                    f"lock-step step {step.seq}: {short} never arrived within "
                    f"{self.timeout_ns / 1e9:g} s; went on without them",
                )
            self._steps.popleft()
            for topic in step.topics_sent():
                queue = self._held.get(topic)
                if queue:
                    out.append((topic, queue.popleft()[1]))
            out.append((CONTROL_TOPIC, step))
            self._oldest_ns = now_ns if self.held else None
        stuck = self._oldest_ns is not None and now_ns - self._oldest_ns >= self.timeout_ns
        if stuck and not self._steps:
            out += self._release_unstepped()
        return out

    def _release_unstepped(self) -> list[tuple[str, Message]]:
        held = sorted(
            ((arrival, topic, msg) for topic, q in self._held.items() for arrival, msg in q),
            key=lambda x: x[0],
        )
        self._held.clear()
        self._oldest_ns = None
        self.counters["unstepped"] += len(held)
        self._log.warning(
            "lockstep_unstepped",
            f"lock-step: {len(held)} messages without a step for {self.timeout_ns / 1e9:g} s "
            "(is the player running with --lockstep?); taken in arrival order",
        )
        return [(topic, msg) for _, topic, msg in held]
