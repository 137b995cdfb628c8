"""Publish and subscribe over ZeroMQ: sockets, delivery modes and their counters.

One `Publisher` per topic binds the topic's endpoint (``ipc://`` on one host, ``tcp://`` across
hosts; see `fusion.wire.services`); any number of `Subscriber`s connect to it. Frames are sent
without a copy and decoded into numpy views of the received frames without a copy.

Transport behaviour that surprises people, stated up front:

- **Late subscribers lose messages.** A PUB socket sends only to subscribers connected at that
  moment. A publisher that must not lose the first messages (the player, feeding a recorder)
  calls `Publisher.wait_for_subscribers` first; it sees subscriptions arrive because it is an
  XPUB socket.
- **Queues drop at the high-water mark.** ZeroMQ drops, silently, whole messages for a
  subscriber whose queue is full. Every message carries a per-sensor ``seq``, so a subscriber
  counts what it never saw as ``lost`` (gaps in ``seq``) instead of losing it silently.
- **Latest-only keeps multipart messages.** ``ZMQ_CONFLATE`` breaks multipart messages, so
  latest-only delivery is done here: a bounded receive queue, drained on each `recv`, keeping the
  newest valid message and counting the older ones as ``skipped``. (A small queue would be
  wrong: at a full queue ZeroMQ drops the newest message, not the oldest.)
- **Garbage is counted, never fatal.** A malformed message is counted as ``rejected`` and logged
  (rate-limited); `recv` goes on to the next one.
- **Nothing listens beyond this host unless told.** Binding ``tcp://`` on all interfaces is
  refused unless ``FUSION_ALLOW_PUBLIC_BIND=1``; ``tcp://`` sockets use CurveZMQ when
  ``FUSION_CURVE_DIR`` names a key folder (`fusion.runtime.security`).
- **One oversized frame does not silence a subscriber.** A subscriber refuses any frame over
  `MAX_MESSAGE_BYTES` before allocating it (``ZMQ_MAXMSGSIZE``); libzmq then drops that
  connection and, for a protocol error, never retries it. A connecting subscriber watches its
  connection (`fusion.runtime.watch.ConnectionWatch`) and connects again itself, counting
  ``reconnects`` and logging it; a publisher refuses to send a frame that large.
- **Tables keyed by what arrives are bounded.** ``seq`` is tracked per sender (``sensor_id``)
  for at most `MAX_TRACKED_SENDERS` senders (the least recently heard is forgotten, counted as
  ``senders_forgotten``), and a ``seq`` jump beyond `MAX_SEQ_GAP` counts as a restart of the
  sender rather than as that many lost messages.
- **Set options before connecting.** Changing the high-water mark on a connected socket can
  deadlock the sender, so every option is set before ``bind``/``connect``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import zmq

from fusion.core.ratelog import RateLimitedLog
from fusion.errors import ConfigError, DecodeError, EncodeError
from fusion.runtime import heartbeat, security
from fusion.runtime.security import CurveConfig, RevocationWatch, secure_socket
from fusion.runtime.watch import ConnectionWatch
from fusion.wire import codec, services
from fusion.wire.messages import Message

log = logging.getLogger(__name__)

#: Send queue per subscriber for latest-only topics: a stale camera frame is worth nothing, and
#: a deep queue of 2.7 MB frames behind a stalled subscriber would cost gigabytes.
LATEST_ONLY_SNDHWM = 16
#: Receive queue of a latest-only subscriber. ZeroMQ drops the *newest* message at a full queue,
#: so the queue must be deep enough that a consumer draining it on every `recv` never fills it
#: (32 frames = 1.6 s of a 20 Hz camera); `recv` then returns the newest and skips the rest.
LATEST_ONLY_RCVHWM = 32
#: Send queue per subscriber for queued topics.
QUEUED_SNDHWM = 1000
LINGER_MS = 200
#: A message this many ``seq`` behind the newest still counts as late rather than lost.
LATE_SEQ_WINDOW = 256
#: Largest frame a subscriber accepts (ZMQ_MAXMSGSIZE applies per frame; a larger one drops the
#: connection before anything is allocated for it).
MAX_MESSAGE_BYTES = 4 * codec.MAX_BUFFER_BYTES
#: A connection that was refused is made again after this, doubling up to the maximum.
RECONNECT_BACKOFF_S = 0.2
RECONNECT_BACKOFF_MAX_S = 5.0
#: Longest wait for an endpoint to be free again after dropping its connections.
REBIND_TIMEOUT_S = 5.0
#: Senders (``sensor_id``) whose ``seq`` a subscriber tracks; a topic has one or a few.
MAX_TRACKED_SENDERS = 64
#: A ``seq`` this far ahead of the last is a sender that restarted elsewhere, not lost messages.
MAX_SEQ_GAP = 1 << 20


def _check_endpoint(url: str, bind: bool) -> None:
    if url.startswith("tcp://") and bind:
        host = url[len("tcp://") :].rpartition(":")[0]
        if host in ("*", "0.0.0.0", "[::]", "::") and not _allow_public_bind():
            raise ConfigError(
                f"refusing to bind {url} on all interfaces; bind to a specific address or set "
                "FUSION_ALLOW_PUBLIC_BIND=1 to make it explicit"
            )


def _allow_public_bind() -> bool:
    return os.environ.get("FUSION_ALLOW_PUBLIC_BIND") == "1"


def _open(
    socket: zmq.Socket, url: str, bind: bool, curve: CurveConfig | None, watch: bool = False
) -> tuple[RevocationWatch | bool, ConnectionWatch | None]:
    """Check `url`, set up CurveZMQ on ``tcp://`` when `curve` (or ``FUSION_CURVE_DIR``) says so
    (the binding side is the Curve server; see `fusion.runtime.security`), then bind or connect.
    Returns what `secure_socket` says (False: not secured; a binding socket's
    `RevocationWatch`) and the socket's `ConnectionWatch`: made for a secured socket, or with
    `watch`. The socket is closed on any failure."""
    _check_endpoint(url, bind)
    try:
        secured = secure_socket(socket, url, server=bind, curve=curve or CurveConfig.from_env())
        watcher = None
        if secured:
            role = "server" if bind else "client"
            watcher = ConnectionWatch(
                socket,
                f"CurveZMQ {role}",
                failure_log=security.log,
                failure_hint=security.FAILURE_HINT,
            )
        elif watch:
            watcher = ConnectionWatch(socket, url, failure_log=log)
        if bind:
            socket.bind(url)
        else:
            socket.connect(url)
    except ConfigError:
        socket.close(0)
        raise
    except zmq.ZMQError as exc:
        socket.close(0)
        raise ConfigError(f"cannot {'bind' if bind else 'connect'} {url}: {exc}") from exc
    return secured, watcher


def _drop_connections(socket: zmq.Socket, endpoint: str, topic: str) -> None:
    """A key was revoked: unbind (which drops every connection made through the endpoint) and
    bind again, so every peer proves itself in a new handshake and a revoked one is refused."""
    log.warning(
        "%s: a key was removed from the authorised keys; dropping every connection to %s so "
        "that each peer is checked again",
        topic,
        endpoint,
    )
    socket.unbind(endpoint)
    # libzmq closes the listener in its I/O thread: the address is free a moment later.
    deadline = time.monotonic() + REBIND_TIMEOUT_S
    while True:
        try:
            socket.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise ConfigError(f"cannot bind {endpoint} again: {exc}") from exc
            time.sleep(0.01)


class Publisher:
    """Publishes messages of one topic.

    `send` stamps ``trace["published"]`` and sends ``[topic, header, buffers...]`` without copying
    the arrays: do not modify a sent array afterwards. By default it binds the topic's endpoint;
    pass ``bind=False`` to connect to a subscriber that binds instead.
    """

    def __init__(
        self,
        topic: str,
        endpoint: str | None = None,
        *,
        bind: bool = True,
        sndhwm: int | None = None,
        context: zmq.Context | None = None,
        curve: CurveConfig | None = None,
    ) -> None:
        svc = services.service(topic)
        self.topic = topic
        self.endpoint = endpoint or services.endpoint(topic)
        self.sent = 0
        self._topic_frame = topic.encode()
        self._subscriptions = 0
        ctx = context or zmq.Context.instance()
        self.socket = ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        hwm = sndhwm or (LATEST_ONLY_SNDHWM if svc.latest_only else QUEUED_SNDHWM)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.XPUB_VERBOSER, 1)
        secured, self.security = _open(self.socket, self.endpoint, bind, curve)
        self._revocations = secured if isinstance(secured, RevocationWatch) else None

    def send(self, msg: Message) -> None:
        """Send `msg`; raises `EncodeError` for a message that cannot be encoded or that has a
        frame over `MAX_MESSAGE_BYTES` (every subscriber would drop its connection for it)."""
        if self._revocations is not None and self._revocations.revoked():
            _drop_connections(self.socket, self.endpoint, self.topic)
        msg.trace["published"] = time.monotonic_ns()
        frames = codec.encode(self.topic, msg)
        largest = max(len(f) for f in frames)
        if largest > MAX_MESSAGE_BYTES:
            raise EncodeError(
                f"{self.topic}: a frame of {largest} bytes is over the {MAX_MESSAGE_BYTES} "
                "subscribers accept; not sent"
            )
        self.socket.send_multipart(frames, copy=False)
        self.sent += 1

    def subscriber_count(self) -> int:
        """Subscriptions to this topic seen so far (connects minus disconnects)."""
        while self.socket.poll(0, zmq.POLLIN):
            event = self.socket.recv()
            if event[:1] in (b"\x00", b"\x01") and self._topic_frame.startswith(event[1:]):
                self._subscriptions += 1 if event[:1] == b"\x01" else -1
        return self._subscriptions

    def wait_for_subscribers(self, count: int = 1, timeout_s: float = 5.0) -> bool:
        """Block until `count` subscribers have subscribed, or `timeout_s` passes.

        Returns whether they all arrived. Use this before sending messages that must not be
        lost to a subscriber that is still connecting (ZeroMQ's "slow joiner").
        """
        deadline = time.monotonic() + timeout_s
        while self.subscriber_count() < count:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return False
            self.socket.poll(min(remaining_ms, 50), zmq.POLLIN)
            heartbeat.beat()
        # The subscription reaches us slightly before the subscriber's pipe is ready.
        time.sleep(0.02)
        return True

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SubscriberStats:
    """What a subscriber saw. Every message that arrived is exactly one of: delivered by
    `recv`, ``skipped`` (an older message dropped by latest-only delivery) or ``rejected``
    (malformed). ``lost`` counts messages that never arrived (gaps in ``seq``: high-water-mark
    drops or a network loss); ``restarts`` counts messages whose ``seq`` went backwards: a
    restarted sender, a duplicate, or a late (reordered) message, which is then taken back from
    ``lost`` if it arrives within `LATE_SEQ_WINDOW` of the gap."""

    received: int = 0
    delivered: int = 0
    skipped: int = 0
    rejected: int = 0
    lost: int = 0
    restarts: int = 0
    #: connections libzmq gave up on (an oversized frame) that the subscriber made again
    reconnects: int = 0
    #: senders whose ``seq`` was no longer tracked, to bound the table (`MAX_TRACKED_SENDERS`)
    senders_forgotten: int = 0
    last_receive_ns: int = 0
    last_error: str = ""
    #: rejected messages by `fusion.errors.DecodeError.reason`
    rejected_by: Counter[str] = field(default_factory=Counter)
    #: sender (``sensor_id``) -> its last ``seq``, least recently heard first
    last_seq: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def as_dict(self) -> dict[str, int]:
        """The message counters (what arrived and what became of it)."""
        return {
            k: getattr(self, k)
            for k in ("received", "delivered", "skipped", "rejected", "lost", "restarts")
        }

    def details(self) -> dict[str, object]:
        """What `as_dict` leaves out: reconnects, senders forgotten, rejections by reason."""
        return {
            "reconnects": self.reconnects,
            "senders_forgotten": self.senders_forgotten,
            "rejected_by": dict(self.rejected_by),
        }


class Subscriber:
    """Receives messages of one topic, latest-only or queued (the registry's default).

    `recv` returns the next message (queued) or the newest one (latest-only), or None on
    timeout; malformed messages are counted in `stats` and skipped, never raised.
    """

    def __init__(
        self,
        topic: str,
        endpoint: str | None = None,
        *,
        latest_only: bool | None = None,
        queue_size: int | None = None,
        bind: bool = False,
        context: zmq.Context | None = None,
        curve: CurveConfig | None = None,
        track_connection: bool = False,
    ) -> None:
        svc = services.service(topic)
        self.topic = topic
        self.endpoint = endpoint or services.endpoint(topic)
        self.latest_only = svc.latest_only if latest_only is None else latest_only
        self._message_type = svc.message_type
        self.stats = SubscriberStats()
        self._missing: dict[str, set[int]] = {}
        self._bind = bind
        self._reconnect_at_s: float | None = None
        self._backoff_s = 0.0
        self._handshakes_seen = 0
        self._failures_seen = 0
        self._log = RateLimitedLog(log)
        ctx = context or zmq.Context.instance()
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        rcvhwm = LATEST_ONLY_RCVHWM if self.latest_only else (queue_size or svc.queue_size)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        # A connecting subscriber always watches its connection, to make again one that libzmq
        # gave up on; `security` shows the watch where Curve or the caller asked for it.
        secured, self._watch = _open(
            self.socket, self.endpoint, bind, curve, watch=track_connection or not bind
        )
        self.security = self._watch if secured or track_connection else None
        self._revocations = secured if isinstance(secured, RevocationWatch) else None

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until a connection to a publisher is up, or `timeout_s` passes. Needs
        ``track_connection=True`` (or CurveZMQ). A consumer that must not miss the first answer
        to its own first request (the lock-step player) waits for this before sending."""
        if self.security is None:
            raise ConfigError(f"{self.topic} subscriber was made without track_connection=True")
        deadline = time.monotonic() + timeout_s
        while self.security.succeeded == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
            heartbeat.beat()
        time.sleep(0.02)  # the subscription follows the handshake
        return True

    def recv(self, timeout_ms: int | None = 0) -> Message | None:
        """The next (queued) or newest (latest-only) valid message, or None after `timeout_ms`
        (0: do not wait; None: wait forever)."""
        got = self.recv_with_frames(timeout_ms)
        return got[1] if got else None

    def recv_with_frames(
        self, timeout_ms: int | None = 0
    ) -> tuple[list[zmq.Frame], Message] | None:
        """As `recv`, also returning the received frames (to record them byte for byte)."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            newest = self._drain_one_batch()
            if newest is not None:
                return newest
            wait_ms = -1 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if deadline is not None and wait_ms <= 0:
                return None
            if not self.socket.poll(wait_ms, zmq.POLLIN):
                return None

    def _reconnect_if_dropped(self) -> None:
        """Connect again when libzmq gave up on our connection (see `ConnectionWatch`): at once
        after a connection that worked, else after a backoff (a refused peer is not hammered)."""
        watch = self._watch
        if watch is None or self._bind:
            return
        now_s = time.monotonic()
        if self._reconnect_at_s is None:
            if not watch.take_dead(now_s):
                return
            if watch.succeeded > self._handshakes_seen:  # the last connection worked
                self._backoff_s = 0.0
            self._handshakes_seen = watch.succeeded
            self._reconnect_at_s = now_s + self._backoff_s
        if now_s < self._reconnect_at_s:
            return
        self._reconnect_at_s = None
        self._backoff_s = min(
            max(2 * self._backoff_s, RECONNECT_BACKOFF_S), RECONNECT_BACKOFF_MAX_S
        )
        self.stats.reconnects += 1
        cause = f"a frame over {MAX_MESSAGE_BYTES} bytes, or a protocol error"
        if watch.failed > self._failures_seen:
            cause = f"a handshake failed: {watch.last_error}"
        self._failures_seen = watch.failed
        self._log.warning(
            "reconnect",
            f"{self.topic}: the connection to {self.endpoint} was dropped and not retried "
            f"({cause}); connecting again (reconnect #{self.stats.reconnects})",
        )
        with contextlib.suppress(zmq.ZMQError):  # libzmq may have forgotten the endpoint
            self.socket.disconnect(self.endpoint)
        self.socket.connect(self.endpoint)

    def _drain_one_batch(self) -> tuple[list[zmq.Frame], Message] | None:
        self._reconnect_if_dropped()
        if self._revocations is not None and self._revocations.revoked():
            _drop_connections(self.socket, self.endpoint, self.topic)
        newest = None
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            now_ns = time.monotonic_ns()
            self.stats.received += 1
            self.stats.last_receive_ns = now_ns
            msg = self._decode(frames)
            if msg is None:
                continue
            msg.trace["received"] = now_ns
            if newest is not None:
                self.stats.skipped += 1
            newest = (frames, msg)
            if not self.latest_only:
                break
        if newest is not None:
            self.stats.delivered += 1
        return newest

    def _decode(self, frames: list[zmq.Frame]) -> Message | None:
        try:
            topic, msg = codec.decode(frames)
            if topic != self.topic:
                raise DecodeError(f"topic {topic!r} on the {self.topic!r} subscription", "topic")
            if not isinstance(msg, self._message_type):
                raise DecodeError(
                    f"{type(msg).__name__} on the {self.topic!r} subscription", "topic_type"
                )
        except DecodeError as exc:
            self.stats.rejected += 1
            self.stats.rejected_by[exc.reason] += 1
            self.stats.last_error = str(exc)
            self._log.warning("rejected", f"{self.topic}: rejected malformed message: {exc}")
            return None
        self._track_seq(msg)
        return msg

    def _track_seq(self, msg: Message) -> None:
        sensor, seq = msg.sensor_id, msg.seq
        senders = self.stats.last_seq
        last = senders.get(sensor)
        if last is None and len(senders) >= MAX_TRACKED_SENDERS:
            forgotten, _ = senders.popitem(last=False)
            self._missing.pop(forgotten, None)
            self.stats.senders_forgotten += 1
            self._log.warning(
                "senders",
                f"{self.topic}: more than {MAX_TRACKED_SENDERS} senders (sensor_id); no longer "
                f"tracking the seq of {forgotten!r:.80}",
            )
        if last is not None:
            senders.move_to_end(sensor)
            missing = self._missing.setdefault(sensor, set())
            if seq - last > MAX_SEQ_GAP:
                self.stats.restarts += 1  # a jump no queue could lose: a new seq origin
                missing.clear()
            elif seq > last + 1:
                self.stats.lost += seq - last - 1
                missing.update(range(max(last + 1, seq - LATE_SEQ_WINDOW), seq))
                if len(missing) > 2 * LATE_SEQ_WINDOW:
                    self._missing[sensor] = {s for s in missing if s >= seq - LATE_SEQ_WINDOW}
            elif seq <= last:
                self.stats.restarts += 1
                if seq in missing:  # late, not lost: reordered on the way
                    missing.discard(seq)
                    self.stats.lost -= 1
                    return
                missing.clear()  # the sender restarted: its old gaps will not be filled
        senders[sensor] = seq

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
