"""Node runtime: input health as data, shutdown flag, latency stats, test doubles."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from fusion.core.latency import LatencyHistogram
from fusion.runtime.node import InputMonitor, Inputs, ShutdownFlag, StatsLine
from fusion.runtime.testing import FakePublisher, FakeSubscriber
from fusion.wire.messages import CameraFrame, RadarScan, empty_points


def scan(seq: int) -> RadarScan:
    return RadarScan(points=empty_points(3), seq=seq, sensor_id="radar")


def test_monitor_alive_on_rate_and_silent() -> None:
    mon = InputMonitor("radar", nominal_rate_hz=10.0)
    assert not mon.health(0).alive
    for i in range(10):
        mon.observe(i * 100_000_000, None)
    h = mon.health(950_000_000)
    assert h.alive and h.on_rate and h.valid and h.rate_hz == pytest.approx(10.0)
    late = mon.health(900_000_000 + 600_000_000)
    assert not late.alive and "silent" in late.problem


def test_monitor_off_rate() -> None:
    mon = InputMonitor("camera", nominal_rate_hz=20.0)
    for i in range(10):
        mon.observe(i * 200_000_000, None)  # 5 Hz
    h = mon.health(1_850_000_000)
    assert h.alive and not h.on_rate and h.rate_hz == pytest.approx(5.0)


def test_inputs_marks_invalid_messages_and_recovers() -> None:
    radar = FakeSubscriber("radar", [scan(0), scan(1)])
    inputs = Inputs(
        {"radar": radar}, validators={"radar": lambda m: "empty" if m.seq == 1 else None}
    )
    got = inputs.poll(0)
    assert [m.seq for m in got["radar"]] == [0, 1]
    assert not inputs.health("radar").valid and inputs.health("radar").problem == "empty"
    radar.push(scan(2))
    inputs.poll(0)
    assert inputs.health("radar").ok
    assert inputs.counters()["radar"]["invalid"] == 1


def test_inputs_name_their_problems_in_one_line() -> None:
    radar = FakeSubscriber("radar", [scan(0), scan(1)])
    inputs = Inputs(
        {"radar": radar}, validators={"radar": lambda m: "empty" if m.seq == 1 else None}
    )
    assert inputs.problems() == "radar no message yet"
    inputs.poll(0)
    assert inputs.problems() == "radar empty"
    radar.push(scan(2))
    inputs.poll(0)
    assert inputs.problems(time.monotonic_ns() + 10**9).startswith("radar silent for")


def test_inputs_validator_exception_is_contained() -> None:
    inputs = Inputs(
        {"radar": FakeSubscriber("radar", [scan(0)])}, validators={"radar": lambda m: 1 / 0}
    )
    inputs.poll(0)
    assert "ZeroDivisionError" in inputs.health("radar").problem


def test_inputs_latest_only_gives_one_newest() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    cam = FakeSubscriber("camera", [CameraFrame(image=image, seq=i) for i in range(5)])
    got = Inputs({"camera": cam}).poll(0)
    assert [m.seq for m in got["camera"]] == [4]
    assert cam.stats.skipped == 4


def test_fake_publisher_round_trips_through_the_codec() -> None:
    pub = FakePublisher("radar")
    pub.send(scan(7))
    assert pub.sent[0].seq == 7 and "published" in pub.sent[0].trace
    assert not pub.sent[0].points.flags.writeable


def test_latency_histogram() -> None:
    stats = LatencyHistogram()
    for v in range(1, 101):
        stats.add(float(v))
    p = stats.percentiles()
    # Recorded values at the percentile (not interpolated), within the 3 significant digits.
    assert p["p50"] == pytest.approx(50.0, rel=1e-3) and p["max"] == pytest.approx(100.0, rel=1e-3)
    assert p["p99"] > 98 and p["n"] == stats.count == 100


def test_shutdown_flag_on_sigterm() -> None:
    flag = ShutdownFlag()
    try:
        assert not flag
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.wait(1.0) and flag.signal_name == "SIGTERM"
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_stats_line_period(caplog: pytest.LogCaptureFixture) -> None:
    line = StatsLine("n", 1.0, lambda: "hello")
    caplog.set_level("INFO")
    line.tick(line._next_ns - 1)
    line.tick(line._next_ns)
    assert caplog.text.count("hello") == 1
