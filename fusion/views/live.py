"""The running graph's messages for a live view: every viewable topic, received as any node does.

A live view subscribes like any other node and never slows the pipeline: its queues drop (and
count) when it falls behind, and what it could not use shows up in `LiveSource.problems`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from fusion.runtime import node
from fusion.runtime.transport import Subscriber
from fusion.wire import services
from fusion.wire.messages import Message

#: What a live view shows, in the order each poll hands it on (calibration first, so a frame's
#: projection is known before the frame is drawn).
LIVE_TOPICS = ("calibration", "ego_motion", "radar", "camera", "ground_truth", "detections")
#: Per-topic queue of a live view's subscriber, in messages (a few seconds of the fastest topic).
LIVE_QUEUE_SIZE = 100


class LiveSource:
    """Subscribes to `topics` of the running graph (at their endpoints or the `overrides`)."""

    def __init__(
        self,
        topics: tuple[str, ...] = LIVE_TOPICS,
        overrides: Mapping[str, str] | None = None,
        queue_size: int = LIVE_QUEUE_SIZE,
    ) -> None:
        self.topics = topics
        subs: dict[str, Subscriber] = {}
        try:
            for topic in topics:
                subs[topic] = Subscriber(
                    topic,
                    services.endpoint(topic, dict(overrides or {})),
                    # The camera is latest-only, as in the fusion node: a view behind by a frame
                    # shows the newest one. The rest is queued (every detection is drawn).
                    latest_only=topic == "camera",
                    queue_size=queue_size,
                )
        except Exception:
            for sub in subs.values():
                sub.close()
            raise
        # Ground truth and ego motion exist only where a drive has them: their silence is fine.
        self.inputs = node.Inputs(subs, quiet=("ground_truth", "ego_motion"))

    def poll(self, timeout_ms: int = 50) -> Iterator[tuple[str, Message, int]]:
        """``(topic, message, received_ns)`` of what arrived within `timeout_ms`, by topic."""
        got = self.inputs.poll(timeout_ms)
        for topic in self.topics:
            for msg in got.get(topic, ()):
                yield topic, msg, msg.trace.get("received", time.monotonic_ns())

    def problems(self) -> str:
        return self.inputs.problems()

    def counters(self) -> dict[str, dict[str, object]]:
        return self.inputs.counters()

    def close(self) -> None:
        self.inputs.close()
