"""Sensor fault injection: a transformation of a ``(topic, message)`` stream, counting what it did.

The player applies it between reading a recording and publishing it (``fusion play --inject
SPEC``), so a node under test sees what a failing sensor or network would send. A spec is
``KIND:TOPIC[:AMOUNT][@START]``; times take ``ns``, ``us``, ``ms`` or ``s``, START is measured
from the first message of the stream (default 0), and a fault lasts to the end of the stream
unless its kind takes a duration:

==========================  ===================================================================
``drop:radar:2s@3s``        messages of the topic are not sent for 2 s from 3 s on
``delay:camera:80ms``       each message is sent 80 ms after it is due, its stamps unchanged
``reorder:radar``           each pair of consecutive messages is sent in swapped order
``duplicate:camera``        each message is sent twice (same ``seq``)
``freeze:camera:1s@2s``     for 1 s the sensor repeats its last message before 2 s (content
                            frozen; ``seq`` and ``capture_ns`` still advance, as a stuck
                            sensor driver's would)
``clock-jump:camera:+500ms``  ``capture_ns`` of every message is shifted by +500 ms (the
                            sensor's clock jumped); negative jumps are written ``-500ms``
==========================  ===================================================================

Times are the recording's: a message's recorded capture time (``trace["recorded_capture_ns"]``,
which the player sets) or, in a stream that is not a replay, its ``capture_ns``; so windows
cover the same messages at any replay rate and in max-speed or lock-step replays. A delayed
message goes out with the first later message whose time is at or after its release time, so a
delay is exact to within one inter-message gap (about 20 ms for a camera + radar + ego-motion
replay at real time); the ones still held when the stream ends go out after `wait_until` their
release on the monotonic clock (a real-time player passes a sleep; without it the
transformation never waits).
`FaultInjector.counts` says, per spec, how many messages each fault touched.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from fusion.errors import ConfigError
from fusion.wire import services
from fusion.wire.messages import Message

#: kind -> (takes an amount, the amount is a duration window rather than a shift)
KINDS: dict[str, tuple[bool, bool]] = {
    "drop": (True, True),
    "delay": (True, False),
    "reorder": (False, False),
    "duplicate": (False, False),
    "freeze": (True, True),
    "clock-jump": (True, False),
}
_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_TIME = re.compile(r"^([+-]?\d+(?:\.\d+)?)(ns|us|ms|s)$")
_SPEC_HELP = (
    "a fault is KIND:TOPIC[:AMOUNT][@START], e.g. drop:radar:2s@3s, delay:camera:80ms, "
    "reorder:radar, duplicate:camera, freeze:camera:1s, clock-jump:camera:+500ms"
)


def parse_time_ns(text: str) -> int:
    """``"80ms"`` -> 80_000_000; signs allowed (``"-500ms"``)."""
    m = _TIME.match(text.strip())
    if not m:
        raise ConfigError(f"{text!r} is not a time; write a number with ns, us, ms or s")
    return round(float(m.group(1)) * _UNITS_NS[m.group(2)])


@dataclass(frozen=True)
class FaultSpec:
    """One parsed ``--inject`` spec; `text` is how it was written (the key of its counter)."""

    kind: str
    topic: str
    amount_ns: int = 0
    start_ns: int = 0
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        body, _, start = text.partition("@")
        parts = body.split(":")
        kind = parts[0]
        if kind not in KINDS:
            raise ConfigError(f"unknown fault {kind!r} in {text!r}; {_SPEC_HELP}")
        takes_amount, is_window = KINDS[kind]
        if len(parts) != (3 if takes_amount else 2):
            raise ConfigError(f"bad fault {text!r}; {_SPEC_HELP}")
        topic = parts[1]
        services.service(topic)
        amount_ns = parse_time_ns(parts[2]) if takes_amount else 0
        if (is_window or kind == "delay") and amount_ns <= 0:
            raise ConfigError(f"{kind} needs a positive time, got {parts[2]!r} in {text!r}")
        if kind == "clock-jump" and amount_ns == 0:
            raise ConfigError(f"clock-jump needs a non-zero shift, got {text!r}")
        start_ns = parse_time_ns(start) if start else 0
        if start_ns < 0:
            raise ConfigError(f"fault start must not be negative, got {text!r}")
        return cls(kind, topic, amount_ns, start_ns, text)

    def active(self, elapsed_ns: int) -> bool:
        """Whether the fault applies to a message sent `elapsed_ns` into the stream."""
        if elapsed_ns < self.start_ns:
            return False
        return not KINDS[self.kind][1] or elapsed_ns < self.start_ns + self.amount_ns


@dataclass(order=True)
class _Item:
    send_ns: int  # when it goes out, in recording time
    order: int  # tie-break: first in, first out
    topic: str = dataclasses.field(compare=False)
    msg: Message = dataclasses.field(compare=False)
    due_ns: int = dataclasses.field(default=0, compare=False)  # its send time, monotonic


class FaultInjector:
    """Applies `specs` in the order given; `counts[spec.text]` = messages each one touched."""

    def __init__(
        self,
        specs: Sequence[FaultSpec | str],
        wait_until: Callable[[int], object] | None = None,
    ) -> None:
        self.wait_until = wait_until
        self.specs = [s if isinstance(s, FaultSpec) else FaultSpec.parse(s) for s in specs]
        self.counts: Counter[str] = Counter({s.text or s.kind: 0 for s in self.specs})
        self._order = itertools.count()
        self._t0_ns: int | None = None

    def apply(self, stream: Iterable[tuple[str, Message]]) -> Iterator[tuple[str, Message]]:
        items: Iterator[_Item] = self._wrap(stream)
        for spec in self.specs:
            items = getattr(self, "_" + spec.kind.replace("-", "_"))(spec, items)
        for item in items:
            yield item.topic, item.msg

    def summary(self) -> str:
        return ", ".join(f"{text} {n}" for text, n in self.counts.items()) or "no faults"

    def _wrap(self, stream: Iterable[tuple[str, Message]]) -> Iterator[_Item]:
        for topic, msg in stream:
            t_ns = msg.trace.get("recorded_capture_ns", msg.capture_ns)
            if self._t0_ns is None:
                self._t0_ns = t_ns
            yield _Item(t_ns, next(self._order), topic, msg, msg.capture_ns)

    def _hits(self, spec: FaultSpec, item: _Item) -> bool:
        return item.topic == spec.topic and spec.active(item.send_ns - (self._t0_ns or 0))

    def _count(self, spec: FaultSpec, n: int = 1) -> None:
        self.counts[spec.text or spec.kind] += n

    # -- one generator per kind ---------------------------------------------------------

    def _drop(self, spec: FaultSpec, items: Iterator[_Item]) -> Iterator[_Item]:
        for item in items:
            if self._hits(spec, item):
                self._count(spec)
            else:
                yield item

    def _delay(self, spec: FaultSpec, items: Iterator[_Item]) -> Iterator[_Item]:
        held: list[_Item] = []
        for item in items:
            while held and held[0].send_ns <= item.send_ns:
                yield heapq.heappop(held)
            if self._hits(spec, item):
                self._count(spec)
                delayed = dataclasses.replace(
                    item, send_ns=item.send_ns + spec.amount_ns, due_ns=item.due_ns + spec.amount_ns
                )
                heapq.heappush(held, delayed)
            else:
                yield item
        while held:
            item = heapq.heappop(held)
            if self.wait_until is not None:
                self.wait_until(item.due_ns)
            yield item

    def _reorder(self, spec: FaultSpec, items: Iterator[_Item]) -> Iterator[_Item]:
        held: _Item | None = None
        for item in items:
            if not self._hits(spec, item):
                yield item
            elif held is None:
                held = item
            else:
                self._count(spec, 2)
                yield item
                yield held
                held = None
        if held is not None:
            yield held

    def _duplicate(self, spec: FaultSpec, items: Iterator[_Item]) -> Iterator[_Item]:
        for item in items:
            yield item
            if self._hits(spec, item):
                self._count(spec)
                copy = dataclasses.replace(item.msg, trace=dict(item.msg.trace))
                yield dataclasses.replace(item, order=next(self._order), msg=copy)

    def _freeze(self, spec: FaultSpec, items: Iterator[_Item]) -> Iterator[_Item]:
        frozen: Message | None = None
        for item in items:
            if item.topic == spec.topic and not self._hits(spec, item):
                frozen = item.msg if item.send_ns - (self._t0_ns or 0) < spec.start_ns else None
            elif self._hits(spec, item):
                if frozen is None:
                    frozen = item.msg  # nothing before the window: freeze on its first message
                else:
                    self._count(spec)
                    item.msg = dataclasses.replace(
                        frozen,
                        seq=item.msg.seq,
                        capture_ns=item.msg.capture_ns,
                        trace=dict(item.msg.trace),
                    )
            yield item

    def _clock_jump(self, spec: FaultSpec, items: Iterator[_Item]) -> Iterator[_Item]:
        for item in items:
            if self._hits(spec, item):
                self._count(spec)
                item.msg = dataclasses.replace(
                    item.msg, capture_ns=item.msg.capture_ns + spec.amount_ns
                )
            yield item


def parse_specs(
    texts: Iterable[str] | None, wait_until: Callable[[int], object] | None = None
) -> FaultInjector | None:
    """A `FaultInjector` for the ``--inject`` values given, or None when there are none."""
    texts = list(texts or [])
    return FaultInjector(texts, wait_until) if texts else None


def sleep_until_monotonic(deadline_ns: int) -> None:
    """A `wait_until` for real-time replays: sleep until ``time.monotonic_ns()`` reaches it."""
    remaining_s = (deadline_ns - time.monotonic_ns()) / 1e9
    if remaining_s > 0:
        time.sleep(remaining_s)
