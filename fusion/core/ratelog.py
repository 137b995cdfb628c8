"""A log for problems that recur: one line per period, saying how often it happened meanwhile.

Nodes meet the same bad input many times a second (a malformed message, a stale frame); logging
each would drown the log and cost time on the hot path. `RateLimitedLog` keeps one line per key
per period and counts the rest.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Log a recurring problem at most once per `period_s`, with how often it happened."""

    def __init__(self, logger: logging.Logger, period_s: float = 5.0) -> None:
        self._logger = logger
        self._period_ns = int(period_s * 1e9)
        self._last_ns: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str) -> None:
        now = time.monotonic_ns()
        if now - self._last_ns.get(key, -self._period_ns) >= self._period_ns:
            extra = self._suppressed.pop(key, 0)
            suffix = f" (+{extra} more since last report)" if extra else ""
            self._logger.warning("%s%s", message, suffix)
            self._last_ns[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
