"""Producer nodes as processes: camera from a folder and a video, radar from UDP datagrams."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from fusion.errors import ConfigError
from fusion.runtime.transport import Subscriber
from fusion.sensors.pacing import Pacer
from fusion.sensors.radar import UdpRadarDriver
from fusion.sensors.sources import parse_source
from fusion.wire.messages import RADAR_POINT_DTYPE


def collect(sub: Subscriber, n: int, timeout_s: float = 30) -> list:
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        if (msg := sub.recv(100)) is not None:
            got.append(msg)
    return got


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=15)
    finally:
        proc.kill()


def test_udp_datagram_round_trip_and_rejects() -> None:
    points = np.zeros(3, RADAR_POINT_DTYPE)
    points["x"] = [1, 2, 3]
    points["v_r"] = [-1, 0, 1]
    parsed = UdpRadarDriver.parse(UdpRadarDriver.pack(7, points))
    np.testing.assert_array_equal(parsed["x"], [1, 2, 3])
    np.testing.assert_array_equal(parsed["v_r"], [-1, 0, 1])
    good = UdpRadarDriver.pack(1, points)
    for bad in (b"", b"RDR1", b"XXXX" + good[4:], good[:-1], good + b"\0"):
        assert UdpRadarDriver.parse(bad) is None


def test_source_specs() -> None:
    assert parse_source("sim:city:3") == ("sim", ["city", "3"])
    with pytest.raises(ConfigError, match="source must be"):
        parse_source("lidar:x")


def test_pacer_keeps_source_timing() -> None:
    pacer = Pacer(rate=2.0)
    t0 = pacer.wait(0)
    t1 = pacer.wait(200_000_000)  # 200 ms of source time at 2x = 100 ms
    assert t1 - t0 == 100_000_000  # stamped when due: the spacing is exact, not jittered
    assert time.monotonic_ns() >= t1
    assert Pacer(rate=0).wait(10**12) > 0


def test_camera_node_from_folder(tmp_path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((48, 64, 3), i * 40, np.uint8))
    calib = tmp_path / "cam.json"
    calib.write_text(
        json.dumps({"K": [[50, 0, 32], [0, 50, 24], [0, 0, 1]], "width_px": 64, "height_px": 48})
    )
    with Subscriber("camera", latest_only=False) as cams, Subscriber("calibration") as cals:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodes.camera",
                "--source",
                f"folder:{folder}",
                "--rate-hz",
                "10",
                "--calibration",
                str(calib),
                "--loop",
                "--wait-for-subscribers",
                "1",
            ]
        )
        try:
            frames = collect(cams, 8)
            calibrations = collect(cals, 1)
        finally:
            assert stop(proc) == 0
    assert len(frames) == 8 and frames[0].image.shape == (48, 64, 3)
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 40, 80, 120, 160, 0, 40, 80]
    gaps_ms = np.diff([f.capture_ns for f in frames]) / 1e6
    assert np.all((gaps_ms > 60) & (gaps_ms < 200)), gaps_ms  # ~10 Hz, across the loop too
    assert all(f.clock == "monotonic" and "recorded_capture_ns" in f.trace for f in frames)
    assert calibrations[0].intrinsics[0, 0] == 50 and calibrations[0].width_px == 64


def test_camera_node_from_video_as_jpeg(tmp_path) -> None:
    path = str(tmp_path / "v.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(6):
        writer.write(np.full((48, 64, 3), i * 30, np.uint8))
    writer.release()
    with Subscriber("camera", latest_only=False) as cams:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodes.camera",
                "--source",
                f"video:{path}",
                "--encoding",
                "jpeg",
                "--wait-for-subscribers",
                "1",
            ]
        )
        frames = collect(cams, 6)
        assert proc.wait(timeout=30) == 0  # a video ends by itself
    assert len(frames) == 6 and all(f.encoding == "jpeg" for f in frames)
    decoded = cv2.imdecode(np.asarray(frames[3].image), cv2.IMREAD_COLOR)
    assert decoded.shape == (48, 64, 3) and abs(int(decoded.mean()) - 90) < 6


def test_radar_node_from_udp_counts_garbage() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    points = np.zeros(10, RADAR_POINT_DTYPE)
    points["x"] = np.arange(10)
    with Subscriber("radar") as radar:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodes.radar", "--source", f"udp:127.0.0.1:{port}"]
        )
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                got = []
                deadline = time.monotonic() + 30
                i = 0
                while len(got) < 5 and time.monotonic() < deadline:
                    tx.sendto(b"garbage", ("127.0.0.1", port))
                    tx.sendto(UdpRadarDriver.pack(i, points), ("127.0.0.1", port))
                    i += 1
                    if (msg := radar.recv(100)) is not None:
                        got.append(msg)
            assert proc.poll() is None  # garbage did not take it down
        finally:
            assert stop(proc) == 0
    assert len(got) == 5 and np.array_equal(got[0].points["x"], np.arange(10))
    assert [m.seq for m in got] == sorted(m.seq for m in got)


def test_pacer_epoch_aligns_producers_and_skips_the_past() -> None:
    epoch = time.monotonic_ns() + 100_000_000
    released = Pacer(epoch_ns=epoch).wait(50_000_000)  # due 50 ms after the epoch
    assert released is not None and released >= epoch + 50_000_000
    late = Pacer(epoch_ns=time.monotonic_ns() - 5_000_000_000)  # a producer restarted 5 s in
    assert late.wait(0) is None and late.wait(50_000_000) is None and late.skipped == 2
    assert late.wait(4_990_000_000) is not None  # catches up with the present
