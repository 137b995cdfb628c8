"""The topic registry: every topic, its message type, rate, delivery mode and whether it is logged.

One line per topic. Nodes, the recorder, the player and the tests read this table; nothing else
names a topic's type or rate. ``latest_only`` inputs keep only the newest message (a stale camera
frame is worth nothing to the fusion node); queued inputs keep up to ``queue_size`` messages and
count what they drop at the high-water mark.

Endpoints: on one host every topic has an ``ipc://`` socket under `ipc_dir()`; across hosts a
topic is published on ``tcp://HOST:port`` (the port is in the table). `endpoint()` applies
overrides from ``FUSION_ENDPOINT_<TOPIC>`` environment variables or ``--endpoint topic=URL``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from fusion.errors import ConfigError
from fusion.wire.messages import (
    Calibration,
    CameraFrame,
    Detections,
    EgoMotion,
    GroundTruth,
    Message,
    RadarScan,
    ReplayControl,
)


@dataclass(frozen=True)
class Service:
    topic: str
    message_type: type[Message]
    rate_hz: float
    latest_only: bool
    recorded: bool
    tcp_port: int
    queue_size: int = 100


SERVICES: dict[str, Service] = {
    s.topic: s
    for s in (
        #       topic            type          rate_hz latest  logged port
        Service("camera", CameraFrame, 20.0, True, True, 5550),
        Service("radar", RadarScan, 13.0, False, True, 5551),
        Service("ego_motion", EgoMotion, 20.0, False, True, 5552),
        Service("ground_truth", GroundTruth, 20.0, False, True, 5553),
        Service("calibration", Calibration, 1.0, False, True, 5554, queue_size=16),
        Service("detections", Detections, 20.0, False, True, 5555),
        Service("replay_control", ReplayControl, 20.0, False, False, 5556, queue_size=1000),
    )
}


def service(topic: str) -> Service:
    try:
        return SERVICES[topic]
    except KeyError:
        raise ConfigError(f"unknown topic {topic!r}; known topics: {sorted(SERVICES)}") from None


def ipc_dir() -> str:
    """Folder of the ``ipc://`` sockets: ``$FUSION_IPC_DIR`` or a per-user temp folder."""
    path = os.environ.get("FUSION_IPC_DIR") or os.path.join(
        tempfile.gettempdir(), f"fusion-{os.getuid()}"
    )
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def endpoint(topic: str, overrides: dict[str, str] | None = None, folder: str | None = None) -> str:
    """The endpoint of `topic`: an override if given, else its ipc socket on this host (in
    `folder`, or `ipc_dir`)."""
    svc = service(topic)
    url = (overrides or {}).get(topic) or os.environ.get(f"FUSION_ENDPOINT_{topic.upper()}")
    if url:
        if not url.startswith(("ipc://", "tcp://", "inproc://")):
            raise ConfigError(
                f"endpoint for {topic!r} must start with ipc://, tcp:// or inproc://, got {url!r}"
            )
        return url
    return f"ipc://{folder or ipc_dir()}/{svc.topic}.sock"


def tcp_endpoint(topic: str, host: str = "127.0.0.1") -> str:
    """The registry's ``tcp://`` endpoint for `topic` on `host` (loopback unless told)."""
    return f"tcp://{host}:{service(topic).tcp_port}"


def parse_endpoint_overrides(items: list[str] | None) -> dict[str, str]:
    """Parse ``topic=URL`` strings (from ``--endpoint``) into a dict, checking each topic."""
    out = {}
    for item in items or []:
        topic, sep, url = item.partition("=")
        if not sep or not url:
            raise ConfigError(f"--endpoint takes topic=URL, got {item!r}")
        service(topic)
        out[topic] = url
    return out
