"""What happens to a socket's connections: handshakes, and connections libzmq gave up on.

`ConnectionWatch` reads a socket's monitor events in a thread of its own and keeps counts the
socket's owner reads: handshakes that succeeded or failed (a CurveZMQ peer with the wrong key),
and connections that dropped. libzmq reconnects a connecting socket whose peer went away, but it
gives up for good on a connection that broke its protocol, above all one that sent a frame over
``ZMQ_MAXMSGSIZE``: the session is closed and never retried, so one oversized message would
silence a subscriber for the rest of its life. The watch marks such a connection (dropped, and no
retry followed within `RETRY_GRACE_S`); the owner calls `take_dead` from its own thread and
connects again (ZeroMQ sockets must only be used from the thread that owns them).
"""

from __future__ import annotations

import logging
import threading
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

#: A connection that dropped is given up by libzmq when no retry follows within this long
#: (a retry is scheduled microseconds after a drop it will retry).
RETRY_GRACE_S = 0.2
#: Handshake failures are logged at most once per this many seconds per socket.
FAILURE_LOG_PERIOD_S = 5.0

_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_CONNECTING = zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CONNECT_RETRIED
_EVENTS = _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _CONNECTING


class ConnectionWatch:
    """Counts a socket's handshakes and dropped connections; see the module docstring.

    `failure_log` and `failure_hint` say where a failed handshake is logged and what to check.
    The thread ends when the socket is closed."""

    def __init__(
        self,
        socket: zmq.Socket,
        label: str,
        *,
        failure_log: logging.Logger,
        failure_hint: str = "",
    ) -> None:
        self.label = label
        self.succeeded = 0
        self.failed = 0
        self.disconnects = 0
        self.last_error = ""
        self._failure_log = failure_log
        self._failure_hint = failure_hint
        self._last_log_s = -FAILURE_LOG_PERIOD_S
        self._lock = threading.Lock()
        self._dropped_at: dict[str, float] = {}  # endpoint -> when its connection dropped
        monitor = socket.get_monitor_socket(_EVENTS)
        self._thread = threading.Thread(
            target=self._run, args=(monitor,), name=f"connections {label}", daemon=True
        )
        self._thread.start()

    def _run(self, monitor: zmq.Socket) -> None:
        try:
            while True:
                event = recv_monitor_message(monitor)
                kind = event["event"]
                endpoint = event["endpoint"].decode(errors="replace")
                if kind == zmq.EVENT_MONITOR_STOPPED:
                    return
                if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.succeeded += 1
                elif kind == zmq.EVENT_DISCONNECTED:
                    self.disconnects += 1
                    with self._lock:
                        self._dropped_at[endpoint] = time.monotonic()
                elif kind & _CONNECTING:
                    with self._lock:
                        self._dropped_at.pop(endpoint, None)
                else:
                    self.failed += 1
                    self.last_error = f"{zmq.Event(kind).name} (value {event['value']})"
                    self._log_failure(endpoint)
        except zmq.ZMQError:
            return
        finally:
            monitor.close(0)

    def take_dead(self, now_s: float | None = None) -> list[str]:
        """The endpoints whose connection dropped more than `RETRY_GRACE_S` ago with no retry
        since: libzmq has given up on them. Each is returned once; connect to it again."""
        if not self._dropped_at:  # the common case, read without the lock
            return []
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            dead = [e for e, t in self._dropped_at.items() if now_s - t >= RETRY_GRACE_S]
            for endpoint in dead:
                del self._dropped_at[endpoint]
        return dead

    def _log_failure(self, endpoint: str) -> None:
        now_s = time.monotonic()
        if now_s - self._last_log_s >= FAILURE_LOG_PERIOD_S:
            self._last_log_s = now_s
            self._failure_log.warning(
                "%s: a handshake on %s failed: %s (%d so far)%s",
                self.label,
                endpoint,
                self.last_error,
                self.failed,
                f"; {self._failure_hint}" if self._failure_hint else "",
            )
