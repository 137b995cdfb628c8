"""The topic registry: every entry is usable end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fusion.errors import ConfigError
from fusion.wire import codec, services
from fusion.wire.messages import MESSAGE_TYPES

#: Arrays whose shape the wire format fixes (a bgr8 image is H x W x 3; calibration matrices).
FIXED_SHAPES = {"image": (0, 0, 3), "sensor_to_ref": (4, 4), "intrinsics": (3, 3)}


@pytest.mark.parametrize("topic", sorted(services.SERVICES))
def test_registry_entry(topic: str) -> None:
    svc = services.SERVICES[topic]
    assert svc.topic == topic
    assert MESSAGE_TYPES[svc.message_type.__name__] is svc.message_type
    assert 0 < svc.rate_hz <= 1000
    assert svc.queue_size > 0
    assert 1024 < svc.tcp_port < 65536
    assert services.endpoint(topic).startswith("ipc://")
    assert services.tcp_endpoint(topic) == f"tcp://127.0.0.1:{svc.tcp_port}"
    # A default instance of the type, with the smallest arrays docs/wire-format.md allows,
    # survives the wire under this topic.
    arrays = {
        name: np.zeros(FIXED_SHAPES.get(name, (0,) * min(ndims)), dtype)
        for name, (dtype, ndims) in svc.message_type.ARRAY_FIELDS.items()
    }
    msg = svc.message_type(**arrays)
    got_topic, got = codec.decode(codec.encode(topic, msg))
    assert got_topic == topic and type(got) is svc.message_type


def test_ports_and_topics_unique() -> None:
    ports = [s.tcp_port for s in services.SERVICES.values()]
    assert len(ports) == len(set(ports))


def test_camera_is_latest_only_and_radar_queued() -> None:
    assert services.service("camera").latest_only
    assert not services.service("radar").latest_only


def test_unknown_topic_names_known_ones() -> None:
    with pytest.raises(ConfigError, match="known topics"):
        services.service("lidar")


def test_endpoint_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    assert services.endpoint("radar", {"radar": "tcp://127.0.0.1:9"}) == "tcp://127.0.0.1:9"
    monkeypatch.setenv("FUSION_ENDPOINT_RADAR", "tcp://127.0.0.1:10")
    assert services.endpoint("radar") == "tcp://127.0.0.1:10"
    assert services.parse_endpoint_overrides(["camera=ipc:///tmp/x"]) == {"camera": "ipc:///tmp/x"}
    with pytest.raises(ConfigError):
        services.parse_endpoint_overrides(["camera"])
    with pytest.raises(ConfigError):
        services.endpoint("radar", {"radar": "udp://x"})


def test_service_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        services.service("camera").rate_hz = 1.0  # type: ignore[misc]
