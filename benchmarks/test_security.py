"""What CurveZMQ costs: our Publisher -> Subscriber over tcp loopback, plain against Curve.

Both cases run in one process (send, then receive the same message), same bytes, same run; the
ratio table at the end gives Curve's cost relative to plain tcp.

    .venv/bin/pytest benchmarks/test_security.py --benchmark-only
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from fusion.runtime import security
from fusion.runtime.security import CurveConfig
from fusion.runtime.transport import Publisher, Subscriber
from fusion.wire.messages import CameraFrame, RadarScan, empty_points

PAYLOADS = {
    "radar 64KB": ("radar", lambda: RadarScan(points=empty_points(2730))),
    "720p BGR": ("camera", lambda: CameraFrame(image=np.ones((720, 1280, 3), np.uint8))),
}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> tuple[CurveConfig, CurveConfig]:
    """A publisher's and a subscriber's host folders, each listing the other."""
    folders: list[Path] = [tmp_path_factory.mktemp(name) for name in ("pub", "sub")]
    for folder in folders:
        security.write_keypair(folder, security.DEFAULT_IDENTITY)
    for folder, peer in zip(folders, reversed(folders), strict=True):
        line = security.line_for(peer / f"{security.DEFAULT_IDENTITY}.key", "127.0.0.1")
        (folder / security.AUTHORIZED_KEYS).write_text(line + "\n")
    return CurveConfig(folders[0]), CurveConfig(folders[1])


@pytest.mark.parametrize("mode", ["plain", "curve"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_curve_overhead(
    benchmark, ratios, hosts: tuple[CurveConfig, CurveConfig], payload: str, mode: str
) -> None:
    topic, make = PAYLOADS[payload]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    pub_keys, sub_keys = hosts if mode == "curve" else (None, None)
    with (
        Publisher(topic, url, curve=pub_keys) as pub,
        Subscriber(topic, url, latest_only=False, curve=sub_keys) as sub,
    ):
        assert pub.wait_for_subscribers(1, 5)
        msg = make()

        def one() -> None:
            pub.send(msg)
            assert sub.recv(2000) is not None

        benchmark.group = f"curve tcp {payload}"
        benchmark.pedantic(one, rounds=100, iterations=1, warmup_rounds=5)
    ratios.add(
        "publisher -> subscriber over tcp, plain vs CurveZMQ",
        payload,
        mode,
        benchmark.stats.stats.median * 1e3,
        baseline="plain",
    )
