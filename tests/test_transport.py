"""Publisher and Subscriber over real sockets: delivery modes, counters, restarts, processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fusion.errors import ConfigError
from fusion.runtime.transport import Publisher, Subscriber
from fusion.wire.messages import CameraFrame, Detections, RadarScan, empty_detections, empty_points


def scan(seq: int, n: int = 8, sensor: str = "radar") -> RadarScan:
    return RadarScan(
        points=empty_points(n), seq=seq, sensor_id=sensor, capture_ns=time.monotonic_ns()
    )


def drain(sub: Subscriber, timeout_ms: int = 300) -> list:
    got = []
    while (msg := sub.recv(timeout_ms)) is not None:
        got.append(msg)
    return got


@pytest.fixture(params=["ipc", "tcp"])
def endpoint(request: pytest.FixtureRequest, ipc_dir) -> str:
    if request.param == "ipc":
        return f"ipc://{ipc_dir}/t.sock"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def test_queued_delivers_everything_in_order(endpoint: str) -> None:
    with Publisher("radar", endpoint) as pub, Subscriber("radar", endpoint) as sub:
        assert pub.wait_for_subscribers(1, timeout_s=5)
        for i in range(200):
            pub.send(scan(i))
        got = drain(sub)
        assert [m.seq for m in got] == list(range(200))
        assert sub.stats.as_dict() == {
            "received": 200,
            "delivered": 200,
            "skipped": 0,
            "rejected": 0,
            "lost": 0,
            "restarts": 0,
        }
        assert all(m.trace["received"] >= m.trace["published"] for m in got)


def test_latest_only_returns_newest_and_counts_skipped(endpoint: str) -> None:
    image = np.zeros((720, 1280, 3), np.uint8)
    with Publisher("camera", endpoint) as pub, Subscriber("camera", endpoint) as sub:
        assert sub.latest_only
        pub.wait_for_subscribers(1, timeout_s=5)
        for i in range(10):
            pub.send(CameraFrame(image=image, seq=i, sensor_id="cam"))
        time.sleep(0.3)
        msg = sub.recv(500)
        assert msg is not None and msg.seq == 9
        assert sub.stats.skipped == 9 and sub.stats.lost == 0
        assert sub.recv(50) is None


def test_garbage_is_counted_and_valid_messages_still_arrive(endpoint: str) -> None:
    with Publisher("radar", endpoint) as pub, Subscriber("radar", endpoint) as sub:
        pub.wait_for_subscribers(1, timeout_s=5)
        pub.send(scan(0))
        pub.socket.send_multipart([b"radar", b"\xc1not msgpack"])
        pub.socket.send_multipart([b"radar"])
        pub.socket.send_multipart([b"radar", b"", b"", b"", b""])
        pub.send(scan(1))
        got = drain(sub)
        assert [m.seq for m in got] == [0, 1]
        assert sub.stats.rejected == 3
        assert "msgpack" in sub.stats.last_error or "map" in sub.stats.last_error


def test_high_water_mark_drops_are_counted_as_lost(ipc_dir) -> None:
    url = f"ipc://{ipc_dir}/hwm.sock"
    with Publisher("radar", url, sndhwm=5) as pub, Subscriber("radar", url, queue_size=5) as sub:
        pub.wait_for_subscribers(1, timeout_s=5)
        sent = 2000
        for i in range(sent - 1):
            pub.send(scan(i, n=200))
        time.sleep(0.2)
        first = drain(sub, 200)
        pub.send(scan(sent - 1))  # a last message after the queue drained marks the tail
        got = first + drain(sub, 300)
        assert sub.stats.lost > 0
        assert len(got) + sub.stats.lost == sent
        assert got[-1].seq == sent - 1


def test_seq_is_tracked_per_sensor(ipc_dir) -> None:
    url = f"ipc://{ipc_dir}/two.sock"
    with Publisher("radar", url) as pub, Subscriber("radar", url) as sub:
        pub.wait_for_subscribers(1, timeout_s=5)
        for i in range(4):
            pub.send(scan(i, sensor="front"))
            pub.send(scan(i, sensor="rear"))
        assert len(drain(sub)) == 8
        assert sub.stats.lost == 0 and sub.stats.restarts == 0


def test_wait_for_subscribers_times_out_without_one(ipc_dir) -> None:
    with Publisher("radar", f"ipc://{ipc_dir}/none.sock") as pub:
        t0 = time.monotonic()
        assert not pub.wait_for_subscribers(1, timeout_s=0.2)
        assert time.monotonic() - t0 < 2


def test_binding_all_interfaces_must_be_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSION_ALLOW_PUBLIC_BIND", raising=False)
    with pytest.raises(ConfigError, match="all interfaces"):
        Publisher("radar", "tcp://0.0.0.0:5999")


def test_bad_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot bind"):
        Publisher("radar", "tcp://127.0.0.1:notaport")


PUBLISHER_PROCESS = textwrap.dedent(
    """
    import sys, time
    from fusion.wire.messages import RadarScan, empty_points
    from fusion.runtime.transport import Publisher
    pub = Publisher("radar", sys.argv[1])
    assert pub.wait_for_subscribers(1, timeout_s=20), "no subscriber"
    for i in range(50):
        pub.send(RadarScan(points=empty_points(500), seq=i, sensor_id="radar",
                           capture_ns=time.monotonic_ns()))
        time.sleep(0.002)
    time.sleep(0.5)
    pub.close()
    """
)


def test_two_processes(endpoint: str) -> None:
    with Subscriber("radar", endpoint) as sub:
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER_PROCESS, endpoint])
        try:
            got = []
            deadline = time.monotonic() + 30
            while len(got) < 50 and time.monotonic() < deadline:
                if (msg := sub.recv(200)) is not None:
                    got.append(msg)
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
        assert [m.seq for m in got] == list(range(50))
        # One monotonic clock on one host: every hop is after the capture.
        assert all(m.capture_ns <= m.trace["published"] <= m.trace["received"] for m in got)


def test_subscriber_survives_a_publisher_killed_and_restarted(endpoint: str) -> None:
    with Subscriber("radar", endpoint) as sub:
        first = subprocess.Popen([sys.executable, "-c", PUBLISHER_PROCESS, endpoint])
        try:
            before = []
            while (msg := sub.recv(10_000)) is not None:
                before.append(msg)
                if msg.seq >= 9:
                    break
        finally:
            first.kill()  # SIGKILL: no chance to close its socket
            first.wait()
        second = subprocess.Popen([sys.executable, "-c", PUBLISHER_PROCESS, endpoint])
        try:
            after = []
            deadline = time.monotonic() + 30
            while len(after) < 50 and time.monotonic() < deadline:
                if (msg := sub.recv(200)) is not None and (after or msg.seq == 0):
                    after.append(msg)
            assert second.wait(timeout=30) == 0
        finally:
            second.kill()
        assert [m.seq for m in before] == list(range(10))
        assert [m.seq for m in after] == list(range(50))
        assert sub.stats.restarts == 1


def test_wait_connected_tracks_the_handshake(ipc_dir) -> None:
    url = f"ipc://{ipc_dir}/late.sock"
    with Subscriber("detections", url, track_connection=True) as sub:
        assert not sub.wait_connected(0.2)  # nothing bound yet
        with Publisher("detections", url) as pub:
            assert sub.wait_connected(5.0)
            pub.send(Detections(objects=empty_detections(), seq=0))  # no wait_for_subscribers
            assert sub.recv(2000) is not None
    with Subscriber("radar", url) as plain, pytest.raises(ConfigError, match="track_connection"):
        plain.wait_connected(0.1)
