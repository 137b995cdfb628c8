"""Attempts per fleet task, kept by one small Ray actor so a retried task's count survives the
death of the worker that ran its earlier attempt.

Each attempt of a task tells `AttemptLog.begin` first and, when it raises, `AttemptLog.failed`,
without waiting for an answer (a task waiting in ``ray.get`` gives its CPU back to Ray); an
attempt that began and neither finished nor failed was lost with its worker (killed, out of
memory, crashed). The driver waits for the actor to be alive before it submits a task, and asks for
the `report` once the task's result (or final error) is in, by when every attempt's calls were
sent long before; an attempt whose worker dies within a few milliseconds of its start could
still go uncounted. The module imports nothing heavy: the
actor's process loads only this.
"""

from __future__ import annotations

#: Why an attempt is counted as lost when it left no reason of its own.
LOST = "the worker died before it finished (killed or crashed)"


class AttemptLog:
    """Per task index: how many attempts began and why those that failed did."""

    def __init__(self) -> None:
        self._began: dict[int, int] = {}
        self._reasons: dict[tuple[int, int], str] = {}

    def begin(self, index: int) -> int:
        """Count a new attempt of task `index`; returns its number (1 for the first)."""
        self._began[index] = self._began.get(index, 0) + 1
        return self._began[index]

    def failed(self, index: int, reason: str) -> None:
        """The latest attempt of task `index` raised, for `reason`."""
        self._reasons[(index, self._began.get(index, 0))] = reason

    def report(self, index: int, finished: bool) -> tuple[int, list[str]]:
        """(attempts, why each attempt that did not give the result did not): every attempt
        but the last when the task `finished`, else all of them."""
        attempts = self._began.get(index, 0)
        unfinished = attempts - 1 if finished else attempts
        reasons = [
            f"attempt {k}: {self._reasons.get((index, k), LOST)}" for k in range(1, unfinished + 1)
        ]
        return attempts, reasons
