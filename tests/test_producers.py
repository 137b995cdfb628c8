"""Producer nodes as processes: camera from a folder and a video, radar from UDP datagrams."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusion.errors import ConfigError
from fusion.runtime.transport import Subscriber
from fusion.sensors.pacing import Pacer
from fusion.sensors.radar import TIME_NONE, TIME_SENSOR, TIME_UNIX, RadarDatagram, UdpRadarDriver
from fusion.sensors.sources import camera_frames_from_capture, capture_time_ns, parse_source
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
    parsed = UdpRadarDriver.parse(UdpRadarDriver.pack(7, points, 123_456, TIME_SENSOR))
    assert (parsed.seq, parsed.time_ns, parsed.time_kind) == (7, 123_456, TIME_SENSOR)
    np.testing.assert_array_equal(parsed.points["x"], [1, 2, 3])
    np.testing.assert_array_equal(parsed.points["v_r"], [-1, 0, 1])
    good = UdpRadarDriver.pack(1, points)
    assert UdpRadarDriver.parse(good).time_kind == TIME_NONE
    bad_kind = good[:16] + b"\x09" + good[17:]
    for bad in (b"", b"RDR2", b"XXXX" + good[4:], good[:-1], good + b"\0", bad_kind):
        assert UdpRadarDriver.parse(bad) is None
    # The first format (no time) is still read, its seq with it.
    raw = np.stack([points[k] for k in ("x", "y", "z", "v_r", "rcs")], axis=1).astype("<f4")
    v1 = struct.pack("<4sII", b"RDR1", 41, 3) + raw.tobytes()
    assert UdpRadarDriver.parse(v1).seq == 41 and UdpRadarDriver.parse(v1).time_kind == TIME_NONE


@pytest.fixture
def udp_driver():
    driver = UdpRadarDriver("127.0.0.1", 0)
    yield driver
    driver.close()


def test_udp_driver_carries_the_sensors_seq_and_counts_losses(udp_driver) -> None:
    address = udp_driver.sock.getsockname()
    points = np.zeros(2, RADAR_POINT_DTYPE)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for seq in (2**32 - 2, 2**32 - 1, 0, 2, 3):  # wraps, and loses one
            tx.sendto(UdpRadarDriver.pack(seq, points), address)
            assert udp_driver.read_scan(timeout_s=10) is not None or pytest.fail("no datagram")
    assert udp_driver.lost == 1
    assert udp_driver._last_seq == 2**32 + 3


def test_udp_driver_moves_sensor_times_onto_the_monotonic_clock(udp_driver) -> None:
    points = np.zeros(0, RADAR_POINT_DTYPE)
    ms = 1_000_000
    # A PTP/NTP-disciplined sensor: its Unix time, less this host's Unix-to-monotonic offset.
    unix = RadarDatagram(0, time.time_ns() - 30 * ms, TIME_UNIX, points)
    expected = time.monotonic_ns() - 30 * ms
    assert abs(udp_driver.capture_ns(unix, received_ns=0) - expected) < 5 * ms
    # A free-running sensor clock: offset by the smallest delay seen (2 ms here).
    sensor_t0, host_t0 = 10**15, 5 * 10**12
    delays_ms = (5, 2, 9, 3)
    stamps = []
    for k, delay in enumerate(delays_ms):
        sent = RadarDatagram(k, sensor_t0 + k * 77 * ms, TIME_SENSOR, points)
        received = host_t0 + k * 77 * ms + delay * ms
        stamps.append(udp_driver.capture_ns(sent, received_ns=received))
    # Late by the smallest delay seen so far: 5 ms for the first scan, then 2 ms.
    assert [s - host_t0 - k * 77 * ms for k, s in enumerate(stamps)] == [5 * ms] + [2 * ms] * 3
    # No sensor time: when it was received.
    none = RadarDatagram(0, 0, TIME_NONE, points)
    assert udp_driver.capture_ns(none, received_ns=42) == 42


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


def mjpeg_video(path: Path, frames: int) -> str:
    """A 64x48 MJPEG video at 25 frames/s whose frame i is grey level 30 * i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 30, np.uint8))
    writer.release()
    return str(path)


def test_camera_node_from_video_as_jpeg(tmp_path) -> None:
    path = mjpeg_video(tmp_path / "v.avi", frames=6)
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


class FakeCapture:
    """An OpenCV capture that reads `positions_ms` as ``CAP_PROP_POS_MSEC``, one per frame."""

    def __init__(self, positions_ms: list[float], fps: float = 25.0) -> None:
        self.positions_ms, self.fps, self.k = positions_ms, fps, -1

    def read(self):
        self.k += 1
        ok = self.k < len(self.positions_ms)
        return ok, np.zeros((4, 4, 3), np.uint8) if ok else None

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else self.positions_ms[self.k]


def test_camera_stamps_are_what_the_source_reports() -> None:
    ms = 1_000_000
    # A video with a variable frame rate keeps its times; where the backend reports none (0, or
    # going backwards), one frame period (25 fps: 40 ms) after the last.
    video = FakeCapture([0.0, 40.0, 100.0, 0.0, 180.5])
    stamps = [f.capture_ns for f in camera_frames_from_capture(video, "cam", live=False)]
    assert stamps == [0, 40 * ms, 100 * ms, 140 * ms, 180_500_000]
    # A device: the V4L2 buffer time (monotonic) when plausible, else the read time.
    before_ms = time.monotonic_ns() / 1e6
    device = FakeCapture([before_ms - 35.0, 12.0])  # 35 ms old; then not on this clock
    frames = list(camera_frames_from_capture(device, "cam", live=True))
    assert abs(frames[0].capture_ns - (before_ms - 35.0) * ms) < 1000
    assert frames[1].capture_ns >= before_ms * ms  # the read time
    assert capture_time_ns(0.0, True, 5 * 10**9, None, 30.0) == 5 * 10**9  # 0: none reported


def test_camera_stamps_of_a_real_video_file(tmp_path) -> None:
    path = mjpeg_video(tmp_path / "v.avi", frames=4)
    capture = cv2.VideoCapture(path)
    try:
        stamps = [f.capture_ns for f in camera_frames_from_capture(capture, "cam", live=False)]
    finally:
        capture.release()
    assert stamps == [0, 40_000_000, 80_000_000, 120_000_000]


def test_an_epoch_anchored_producer_starting_late_starts_its_source_at_the_present() -> None:
    s = 1_000_000_000
    late = Pacer(epoch_ns=time.monotonic_ns() - 5 * s)
    assert 5 * s <= late.start_offset_ns() < 6 * s
    assert Pacer(epoch_ns=time.monotonic_ns() + s).start_offset_ns() == 0  # not started yet
    assert Pacer().start_offset_ns() == 0  # not anchored: from the source's start
    late.wait(late.start_offset_ns())
    assert late.start_offset_ns() == 0  # once running, nothing to skip
