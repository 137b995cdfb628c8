"""Transport: ours against raw pyzmq zero-copy multipart and pickle over zmq, same bytes, same run.

Each case runs an echo process that receives the payload over the transport under test, notes
its one-way latency from the sender's monotonic stamp (one host, one clock) and answers with a
one-byte ack. pytest-benchmark times the round trip (payload out, ack back); one-way p50/p99
and messages/s go into the benchmark's extra info and the ratio table at the end.

    .venv/bin/pytest benchmarks/test_transport.py --benchmark-only
"""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from fusion.messages import CameraFrame, RadarScan, empty_points
from fusion.transport import Publisher

PAYLOADS = {
    "64B": lambda: CameraFrame(image=np.ones(64, np.uint8), encoding="jpeg"),
    "radar 64KB": lambda: RadarScan(points=empty_points(2730)),
    "720p BGR": lambda: CameraFrame(image=np.ones((720, 1280, 3), np.uint8)),
    "1080p BGR": lambda: CameraFrame(image=np.ones((1080, 1920, 3), np.uint8)),
}
IMPLS = ("raw pyzmq", "ours", "pickle")
ROUNDS = {"64B": 400, "radar 64KB": 300, "720p BGR": 150, "1080p BGR": 100}

ECHO = r"""
import json, pickle, sys, time
import zmq
from fusion import codec
impl, data_url, ack_url, topic = sys.argv[1:5]
ctx = zmq.Context.instance()
sub = ctx.socket(zmq.SUB); sub.setsockopt(zmq.RCVHWM, 1000); sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(data_url)
ack = ctx.socket(zmq.PUSH); ack.connect(ack_url)
one_way_ns = []
while True:
    frames = sub.recv_multipart(copy=False)
    now = time.monotonic_ns()
    if frames[0].bytes == b"stop":
        break
    if frames[0].bytes == b"hello":
        ack.send(b"k")
        continue
    if impl == "ours":
        _, msg = codec.decode(frames)
        sent_ns = msg.trace["published"]
    elif impl == "raw pyzmq":
        sent_ns = int.from_bytes(frames[1].bytes, "little")
        payload = frames[2].buffer
    else:
        sent_ns, payload = pickle.loads(frames[1].bytes)
    one_way_ns.append(now - sent_ns)
    ack.send(b"k")
ack.send(json.dumps(one_way_ns).encode())
"""


def free_url(kind: str, ipc_dir, name: str) -> str:
    if kind == "ipc":
        return f"ipc://{ipc_dir}/{name}.sock"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Sender:
    """Sends one payload with the implementation under test."""

    def __init__(self, impl: str, url: str, topic: str, msg) -> None:
        self.impl, self.topic, self.msg = impl, topic, msg
        self.array = next(v for v in vars(msg).values() if isinstance(v, np.ndarray))
        if impl == "ours":
            self.pub = Publisher(topic, url, sndhwm=1000)
            self.socket = self.pub.socket
        else:
            self.socket = zmq.Context.instance().socket(zmq.XPUB)
            self.socket.setsockopt(zmq.SNDHWM, 1000)
            self.socket.bind(url)

    def wait_for_subscriber(self) -> None:
        assert self.socket.poll(20_000, zmq.POLLIN), "echo process never subscribed"
        self.socket.recv()
        time.sleep(0.05)

    def send(self, topic: bytes | None = None) -> None:
        t = topic or self.topic.encode()
        if topic is not None:  # control message: hello / stop
            self.socket.send_multipart([t, b""])
        elif self.impl == "ours":
            self.pub.send(self.msg)
        elif self.impl == "raw pyzmq":
            stamp = time.monotonic_ns().to_bytes(8, "little")
            self.socket.send_multipart([t, stamp, self.array], copy=False)
        else:
            body = pickle.dumps((time.monotonic_ns(), self.array), protocol=5)
            self.socket.send_multipart([t, body])

    def close(self) -> None:
        self.socket.close(linger=1000)


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("impl", IMPLS)
def test_transport_round_trip(
    benchmark, ratios, ipc_dir, kind: str, payload: str, impl: str
) -> None:
    topic = "camera" if isinstance(PAYLOADS[payload](), CameraFrame) else "radar"
    data_url = free_url(kind, ipc_dir, "data")
    ack_url = f"ipc://{ipc_dir}/ack.sock"
    ack = zmq.Context.instance().socket(zmq.PULL)
    ack.bind(ack_url)
    sender = Sender(impl, data_url, topic, PAYLOADS[payload]())
    echo = subprocess.Popen([sys.executable, "-c", ECHO, impl, data_url, ack_url, topic])
    try:
        sender.wait_for_subscriber()
        for _ in range(3):  # warm the path; these are not timed
            sender.send(b"hello")
            ack.recv()

        def round_trip() -> None:
            sender.send()
            ack.recv()

        benchmark.group = f"transport {kind} {payload}"
        benchmark.pedantic(round_trip, rounds=ROUNDS[payload], iterations=1, warmup_rounds=5)
        sender.send(b"stop")
        one_way = np.array(json.loads(ack.recv())) / 1e6
        assert echo.wait(timeout=30) == 0
    finally:
        echo.kill()
        sender.close()
        ack.close(linger=0)
    median_s = benchmark.stats.stats.median
    p50, p99 = float(np.percentile(one_way, 50)), float(np.percentile(one_way, 99))
    benchmark.extra_info.update(
        {"one_way_p50_ms": p50, "one_way_p99_ms": p99, "round_trips_per_s": 1 / median_s}
    )
    ratios.add(f"transport round trip, {kind}", payload, impl, median_s * 1e3, baseline="raw pyzmq")
    ratios.add(f"transport one-way p50, {kind}", payload, impl, p50, baseline="raw pyzmq")
    ratios.add(f"transport one-way p99, {kind}", payload, impl, p99, baseline="raw pyzmq")
