"""The live graph as processes: simulated producers, the fusion node, a recorder, the launcher.

A radar producer killed mid-drive: the fusion node keeps publishing camera-only, the launcher
restarts the producer, and outputs go back to fused. A tiny untrained network stands in for the
model (the modes do not depend on what it detects), so the test is about the plumbing.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest

from fusion.logs.reader import RecordingReader
from fusion.runtime.graph import GraphSpec, NodeSpec
from fusion.runtime.launch import Launcher
from tests import nodeproc as npc


@pytest.fixture
def tiny_weights(tmp_path):
    return npc.tiny_weights(tmp_path / "tiny.safetensors")


def supervise_until(launcher: Launcher, t_ns: int) -> None:
    while time.monotonic_ns() < t_ns:
        launcher.supervise()
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_radar_producer_degrades_then_recovers(tmp_path, tiny_weights) -> None:
    py = [sys.executable, "-m"]
    sim = ["--duration-s", "16"]
    graph = GraphSpec(
        name="faults",
        epoch_delay_s=8.0,
        nodes=[
            NodeSpec(
                "recorder",
                [*py, "nodes.recorder", "-o", str(tmp_path / "out.mcap"), "--topics", "detections"],
            ),
            NodeSpec(
                "fusion",
                [*py, "nodes.fusion_node", "--weights", str(tiny_weights), "--budget-ms", "250"],
            ),
            NodeSpec(
                "camera",
                [
                    *py,
                    "nodes.camera",
                    "--source",
                    "sim:city:5",
                    "--width",
                    "320",
                    "--height",
                    "180",
                    *sim,
                ],
            ),
            NodeSpec(
                "radar", [*py, "nodes.radar", "--source", "sim:city:5", *sim], restart="always"
            ),
        ],
    )
    launcher = Launcher(graph, tmp_path / "logs")
    launcher.start()
    try:
        kill_ns = launcher.epoch_ns + 5_000_000_000
        supervise_until(launcher, kill_ns)
        radar = launcher.nodes["radar"]
        assert radar.running, (tmp_path / "logs" / "radar.log").read_text()
        os.kill(radar.process.pid, signal.SIGKILL)
        supervise_until(launcher, launcher.epoch_ns + 12_000_000_000)
        assert radar.restarts == 1 and radar.running
        assert 0.3 < radar.downtime_s < 3.0
    finally:
        launcher.stop()
    outputs = [
        (r.decode().capture_ns, r.decode().mode)
        for r in RecordingReader(tmp_path / "out.mcap").messages(topics=["detections"])
    ]
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text()[-2000:]}" for p in (tmp_path / "logs").iterdir()
    )
    assert len(outputs) > 100, logs
    t_s = np.array([t - kill_ns for t, _ in outputs]) / 1e9
    modes = np.array([m for _, m in outputs])
    assert (modes[t_s < -1.0] == "fused").mean() > 0.9, logs
    after_kill = np.flatnonzero((t_s > 0.5) & (modes == "fused"))
    assert len(after_kill), logs
    resumed_s = t_s[after_kill[0]]  # the restarted producer's first scan was fused
    assert radar.downtime_s < resumed_s < 6.0, logs
    gap = modes[(t_s > 0.5) & (t_s < resumed_s)]
    assert len(gap) > 3 and set(gap) == {"camera_only"}, logs
    assert (modes[t_s > resumed_s] == "fused").mean() > 0.9, logs
