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
def keys(tmp_path_factory: pytest.TempPathFactory) -> CurveConfig:
    folder: Path = tmp_path_factory.mktemp("keys")
    security.write_keypair(folder, "server")
    public, _ = security.write_keypair(folder, "client")
    (folder / "authorized").mkdir()
    (folder / "authorized" / public.name).write_bytes(public.read_bytes())
    return CurveConfig(folder)


@pytest.mark.parametrize("mode", ["plain", "curve"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_curve_overhead(benchmark, ratios, keys: CurveConfig, payload: str, mode: str) -> None:
    topic, make = PAYLOADS[payload]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    curve = keys if mode == "curve" else None
    with (
        Publisher(topic, url, curve=curve) as pub,
        Subscriber(topic, url, latest_only=False, curve=curve) as sub,
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
