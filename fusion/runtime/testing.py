"""Test doubles shipped with the library, so node logic is tested without sockets.

`FakeSubscriber` is fed from a list and answers `recv` like a `fusion.runtime.transport.Subscriber`;
`FakePublisher` keeps what was sent, after a round trip through the wire codec, so a test also
catches a message that could not have been sent for real.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

import numpy as np

from fusion.runtime.transport import SubscriberStats
from fusion.wire import codec, services
from fusion.wire.messages import Calibration, Message


class FakeSubscriber:
    """A subscriber fed from `messages`. Latest-only fakes deliver the newest of what has been
    `push`ed since the last `recv` (counting the rest as skipped), like the real one."""

    socket = None

    def __init__(
        self, topic: str, messages: Iterable[Message] = (), *, latest_only: bool | None = None
    ) -> None:
        svc = services.service(topic)
        self.topic = topic
        self.latest_only = svc.latest_only if latest_only is None else latest_only
        self.stats = SubscriberStats()
        self._queue: deque[Message] = deque()
        for msg in messages:
            self.push(msg)

    def push(self, msg: Message) -> None:
        self._queue.append(msg)

    def recv(self, timeout_ms: int | None = 0) -> Message | None:
        if not self._queue:
            return None
        if self.latest_only:
            self.stats.skipped += len(self._queue) - 1
            self.stats.received += len(self._queue)
            msg = self._queue.pop()
            self._queue.clear()
        else:
            self.stats.received += 1
            msg = self._queue.popleft()
        msg.trace.setdefault("received", time.monotonic_ns())
        self.stats.delivered += 1
        self.stats.last_receive_ns = time.monotonic_ns()
        return msg

    def close(self) -> None:
        self._queue.clear()


class FakePublisher:
    """Keeps every message sent, as decoded from its wire encoding, in `sent`."""

    def __init__(self, topic: str) -> None:
        services.service(topic)
        self.topic = topic
        self.sent: list[Message] = []

    def send(self, msg: Message) -> None:
        msg.trace["published"] = time.monotonic_ns()
        _, decoded = codec.decode(codec.encode(self.topic, msg))
        self.sent.append(decoded)

    def close(self) -> None:
        pass


def forward_camera_calibration(
    width_px: int, height_px: int, focal_px: float = 200.0, sensor_id: str = "camera_front"
) -> Calibration:
    """A pinhole camera at the reference origin looking along +x (OpenCV axes), for tests."""
    cam_to_ref = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)
    K = np.array([[focal_px, 0, width_px / 2], [0, focal_px, height_px / 2], [0, 0, 1]], float)
    return Calibration(
        sensor_to_ref=cam_to_ref,
        intrinsics=K,
        distortion=np.zeros(5),
        width_px=width_px,
        height_px=height_px,
        sensor_id=sensor_id,
    )
