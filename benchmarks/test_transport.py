"""Transport: ours against raw pyzmq zero-copy multipart, pickle over zmq and Eclipse Zenoh's
Python pub/sub, same bytes, same run.

Each case runs the echo rig of `benchmarks._echo`: an echo process receives the payload over the
transport under test, notes its one-way latency and answers with a one-byte ack on a separate
channel. pytest-benchmark times the round trip (payload out, ack back); one-way p50/p99 and
round trips/s go into the benchmark's extra info and the ratio tables at the end. Zenoh runs as
peers on loopback (``unixsock-stream`` for ipc, ``tcp`` for tcp), multicast scouting off.

    .venv/bin/pytest benchmarks/test_transport.py --benchmark-only

Target (DESIGN.md): ours within 1.2x of raw pyzmq for a 1280x720 BGR frame over ipc.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._echo import IMPLS, EchoRig
from fusion.wire.messages import CameraFrame, RadarScan, empty_points

PAYLOADS = {
    "64B": lambda: CameraFrame(image=np.ones(64, np.uint8), encoding="jpeg"),
    "radar 64KB": lambda: RadarScan(points=empty_points(2730)),
    "720p BGR": lambda: CameraFrame(image=np.ones((720, 1280, 3), np.uint8)),
    "1080p BGR": lambda: CameraFrame(image=np.ones((1080, 1920, 3), np.uint8)),
}
ROUNDS = {"64B": 400, "radar 64KB": 300, "720p BGR": 150, "1080p BGR": 100}


def topic_of(msg) -> str:
    return "camera" if isinstance(msg, CameraFrame) else "radar"


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("impl", IMPLS)
def test_transport_round_trip(
    benchmark, ratios, ipc_dir, kind: str, payload: str, impl: str
) -> None:
    if impl == "zenoh":
        pytest.importorskip("zenoh", reason="install eclipse-zenoh (the dev extra has it)")
    msg = PAYLOADS[payload]()
    with EchoRig(impl, kind, ipc_dir, topic_of(msg), msg) as rig:
        benchmark.group = f"transport {kind} {payload}"
        benchmark.pedantic(rig.round_trip, rounds=ROUNDS[payload], iterations=1, warmup_rounds=5)
        one_way = rig.finish()
    median_s = benchmark.stats.stats.median
    p50, p99 = float(np.percentile(one_way, 50)), float(np.percentile(one_way, 99))
    benchmark.extra_info.update(
        {"one_way_p50_ms": p50, "one_way_p99_ms": p99, "round_trips_per_s": 1 / median_s}
    )
    ratios.add(f"transport round trip, {kind}", payload, impl, median_s * 1e3, baseline="raw pyzmq")
    ratios.add(f"transport one-way p50, {kind}", payload, impl, p50, baseline="raw pyzmq")
    ratios.add(f"transport one-way p99, {kind}", payload, impl, p99, baseline="raw pyzmq")
