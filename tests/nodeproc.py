"""Helpers for tests that run real node processes: a tiny model, valid inputs, start and stop.

Node processes inherit the test's ``FUSION_IPC_DIR`` (set per test by conftest), so their
``ipc://`` sockets never collide with another test's.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fusion.wire.messages import RADAR_POINT_DTYPE, Calibration, CameraFrame, EgoMotion, RadarScan

REPO = Path(__file__).resolve().parents[1]
#: Camera image size of the test inputs (16:9 like the simulator's camera).
W, H = 320, 180
#: Longest a node may take to start (torch import, model load and warm-up on a busy 2-core CPU).
START_TIMEOUT_S = 90.0


def tiny_weights(path: Path) -> Path:
    """A checkpoint of an untrained tiny network: fast to load and run, shape-correct outputs."""
    import torch

    from fusion.model import FusionNet, save_weights
    from fusion.model.synthetic import tiny_config

    torch.manual_seed(0)
    save_weights(path, FusionNet(tiny_config()).eval())
    return path


def calibration() -> Calibration:
    cam_to_ref = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)
    intrinsics = np.array([[200, 0, W / 2], [0, 200, H / 2], [0, 0, 1]], float)
    return Calibration(
        sensor_to_ref=cam_to_ref,
        intrinsics=intrinsics,
        distortion=np.zeros(5),
        width_px=W,
        height_px=H,
        sensor_id="camera_front",
        capture_ns=time.monotonic_ns(),
    )


def camera_frame(
    seq: int, capture_ns: int | None = None, width_px: int = W, height_px: int = H
) -> CameraFrame:
    """A uniform BGR frame (any 16:9 size matches `calibration`)."""
    image = np.full((height_px, width_px, 3), seq % 256, np.uint8)
    return CameraFrame(
        image=image,
        seq=seq,
        capture_ns=time.monotonic_ns() if capture_ns is None else capture_ns,
        sensor_id="camera_front",
    )


def radar_scan(seq: int, capture_ns: int | None = None, n_points: int = 64) -> RadarScan:
    points = np.zeros(n_points, RADAR_POINT_DTYPE)
    points["x"] = np.linspace(5, 40, n_points)
    points["y"] = np.linspace(-3, 3, n_points)
    points["rcs"] = 5.0
    return RadarScan(
        points=points,
        seq=seq,
        capture_ns=time.monotonic_ns() if capture_ns is None else capture_ns,
        sensor_id="radar",
    )


def ego_motion(seq: int) -> EgoMotion:
    return EgoMotion(
        speed_mps=5.0, yaw_rate_rps=0.0, seq=seq, capture_ns=time.monotonic_ns(), sensor_id="ego"
    )


def fusion_node_args(weights: Path, budget_ms: object, readers: int = 0) -> list[str]:
    """Arguments every test's fusion node shares: the given weights, one CPU thread, a budget.
    `readers`: how many subscribers of its Detections it waits for before it takes inputs (a
    test that reads the answers passes 1: the first answer could otherwise go out while the
    test's subscriber is still connecting, and be lost)."""
    args = ["--weights", str(weights), "--device", "cpu", "--threads", "1"]
    args += ["--budget-ms", str(budget_ms)]
    return args + (["--wait-for-subscribers", str(readers)] if readers else [])


def start(module: str, args: list[str], log_path: Path) -> subprocess.Popen:
    """Run ``python -m module args`` with its output in `log_path`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen, log_path: Path, timeout_s: float = 20.0) -> str:
    """SIGINT `proc`, wait for it (kill after `timeout_s`), return its log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"{proc.args} did not stop on SIGINT:\n{log_path.read_text()}"
            ) from None
    return log_path.read_text()


def input_counters(log_text: str) -> dict[str, dict[str, int]]:
    """The per-input counters a node logs when it closes its inputs
    (`fusion.runtime.node.Inputs`)."""
    found = re.findall(r"input counters at close: (\{.*\})", log_text)
    assert found, f"no input counters in the node's log:\n{log_text[-3000:]}"
    return json.loads(found[-1])


def recorder_counts(log_text: str) -> dict[str, dict[str, int]]:
    """Per topic written/lost/rejected from the recorder's newest ``written:`` line."""
    lines = re.findall(r"written: (.*)", log_text)
    out: dict[str, dict[str, int]] = {}
    for part in (lines[-1] if lines else "").split(", "):
        m = re.match(r"(\w+) (\d+)(?: lost (\d+))?(?: rejected (\d+))?", part)
        if m:
            out[m.group(1)] = {
                "written": int(m.group(2)),
                "lost": int(m.group(3) or 0),
                "rejected": int(m.group(4) or 0),
            }
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def pipeline_counters(log_text: str) -> dict[str, int]:
    """The fusion node's drop counters by reason, from its final line (``{'stale': 3, ...}``)."""
    found = re.findall(r"\[fusion\] final: .*; (\{.*\}|no drops)$", log_text, re.MULTILINE)
    assert found, f"no final line in the fusion node's log:\n{log_text[-2000:]}"
    return {} if found[-1] == "no drops" else ast.literal_eval(found[-1])
