"""A node's heartbeat: proof, from its main loop, that it is still answering.

A process that is there is not necessarily working: a deadlock, a loop stuck in a C call or a
process stopped with SIGSTOP keeps its pid and never exits. Every node's main loop calls `beat`
(the stats line's `tick` does, and so do the loops that wait: pacing, the player, waiting for
subscribers); a wait longer than a beat period goes through `sleep`, which beats as it waits.

A node started by the launcher finds ``FUSION_HEARTBEAT_FILE`` in its environment and writes its
heartbeat there at most once per `PERIOD_S` (a small JSON record: pid, beats, this host's
monotonic time), replacing the file atomically. The launcher's watchdog (`read`) restarts a node
whose heartbeat stopped for longer than its graph allows. `Heartbeat.summary` goes in every
node's stats line: beats so far and the longest gap between two beats since the last line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

#: A node writes its heartbeat file at most this often.
PERIOD_S = 1.0
HEARTBEAT_FILE_ENV = "FUSION_HEARTBEAT_FILE"


@dataclass(frozen=True)
class HeartbeatRecord:
    """What a heartbeat file says: whose it is, how many beats, and when (monotonic ns)."""

    pid: int
    beats: int
    monotonic_ns: int


class Heartbeat:
    """Beats of one process's main loop; see the module docstring."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.beats = 0
        self._last_ns: int | None = None
        self._longest_gap_ns = 0
        self._next_write_ns = 0

    def beat(self, now_ns: int | None = None) -> None:
        """The main loop is alive; writes the heartbeat file when one is due."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        self.beats += 1
        if self._last_ns is not None:
            self._longest_gap_ns = max(self._longest_gap_ns, now_ns - self._last_ns)
        self._last_ns = now_ns
        if self.path and now_ns >= self._next_write_ns:
            self._next_write_ns = now_ns + int(PERIOD_S * 1e9)
            self._write(now_ns)

    def _write(self, now_ns: int) -> None:
        record = {"pid": os.getpid(), "beats": self.beats, "monotonic_ns": now_ns}
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a full disk must not stop the node; the watchdog will see a stale heartbeat

    def sleep(self, seconds: float) -> None:
        """Sleep `seconds`, beating at least twice a period meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, PERIOD_S / 2))
            self.beat()

    def summary(self) -> str:
        """Beats so far and the longest gap since the last summary (then forgotten)."""
        gap_ms, self._longest_gap_ns = self._longest_gap_ns / 1e6, 0
        return f"heartbeat {self.beats} (longest gap {gap_ms:.0f} ms)"


_this_process: Heartbeat | None = None


def this_process() -> Heartbeat:
    """The heartbeat of this process (its file from ``FUSION_HEARTBEAT_FILE``, if set)."""
    global _this_process
    if _this_process is None:
        _this_process = Heartbeat(os.environ.get(HEARTBEAT_FILE_ENV) or None)
    return _this_process


def beat() -> None:
    this_process().beat()


def sleep(seconds: float) -> None:
    this_process().sleep(seconds)


def read(path: str | os.PathLike[str]) -> HeartbeatRecord | None:
    """The heartbeat in `path`, or None when there is none (yet) or it cannot be read."""
    try:
        with open(path) as f:
            raw = json.load(f)
        return HeartbeatRecord(int(raw["pid"]), int(raw["beats"]), int(raw["monotonic_ns"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
