"""Lock-step replay through a real fusion node process: the same outputs on a slow machine, the
same pairs as offline pairing, real recordings paired frame by frame, every frame answered."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fusion.cli import main as fusion_main
from fusion.logs.reader import RecordingReader
from fusion.perception.sync import DEFAULT_SLOP_MS, ApproximateTimeSync
from fusion.runtime.transport import Subscriber
from fusion.wire.messages import Detections
from tests import nodeproc as npc

REPO = Path(__file__).resolve().parents[1]
CITY = REPO / "recordings" / "city.mcap"
TOPICS = "camera,radar,calibration,ego_motion"
#: Longest the outputs may take to reach the test's subscriber after the player finished.
DRAIN_TIMEOUT_S = 30.0


def lockstep_replay(
    recording: Path, tmp_path: Path, *, end_s: float | None, topics: str, node_args=()
) -> tuple[list[Detections], str]:
    """Start a lock-step fusion node (tiny weights), replay `recording` into it with
    ``fusion play --lockstep`` started at once (so the player waits for the node to warm up),
    and return every output in order, and the node's log."""
    weights = tmp_path / "tiny.safetensors"
    if not weights.exists():
        npc.tiny_weights(weights)
    outputs: list[Detections] = []
    log_path = tmp_path / f"fusion{len(list(tmp_path.glob('fusion*.log')))}.log"
    with Subscriber("detections", latest_only=False, queue_size=100_000) as sub:
        proc = npc.start(
            "nodes.fusion_node",
            [
                *npc.fusion_node_args(weights, budget_ms=50, readers=2),  # this test, the player
                "--lockstep",
                "--stats-period-s",
                "0",
                *node_args,
            ],
            log_path,
        )
        try:
            argv = ["play", str(recording), "--lockstep", "--topics", topics, "--no-progress"]
            rc = fusion_main(argv + (["--end", str(end_s)] if end_s else []))
            assert rc == 0, log_path.read_text()
            with RecordingReader(recording) as reader:
                end_ns = None if end_s is None else reader.start_ns + int(end_s * 1e9)
                frames = sum(1 for _ in reader.messages(["camera"], end_ns=end_ns))
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while sum("camera" in o.source_seqs for o in outputs) < frames:
                assert time.monotonic() < deadline, (
                    f"{len(outputs)} outputs for {frames} frames:\n{log_path.read_text()[-3000:]}"
                )
                if (out := sub.recv(100)) is not None:
                    outputs.append(out)
        finally:
            text = npc.stop(proc, log_path)
    return outputs, text


def offline_pairs(recording: Path, end_s: float | None) -> list[tuple[int, int | None]]:
    """(camera seq, radar seq or None) for each frame, from the recording in log order through
    the synchroniser without a deadline, flushed at the end: how training pairs frames."""
    sync = ApproximateTimeSync(slop_ns=int(DEFAULT_SLOP_MS * 1e6), deadline_ns=None)
    released = []
    with RecordingReader(recording) as reader:
        end_ns = None if end_s is None else reader.start_ns + int(end_s * 1e9)
        for record in reader.messages(["camera", "radar"], end_ns=end_ns):
            msg = record.decode()
            if record.topic == "camera":
                sync.add_camera(msg)
            else:
                sync.add_radar(msg)
            released += sync.pop_ready()
    released += sync.flush()
    return [(s.camera.seq, s.radar[-1].seq if s.radar else None) for s in released]


def pairs_of(outputs: list[Detections]) -> list[tuple[int, int | None]]:
    return [(o.source_seqs["camera"], o.source_seqs.get("radar")) for o in outputs]


def same_outputs(a: list[Detections], b: list[Detections]) -> None:
    """Equal field by field, but for the wall-clock stamps: ``capture_ns`` (the replay's
    offset) and ``trace`` (only its ``recorded_capture_ns`` must match)."""
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        for f in dataclasses.fields(Detections):
            if f.name in ("capture_ns", "trace"):
                continue
            u, v = getattr(x, f.name), getattr(y, f.name)
            same = np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v
            assert same, f"output {i} ({x.source_seqs}): {f.name} {u!r} != {v!r}"
        got = (x.trace["recorded_capture_ns"], y.trace["recorded_capture_ns"])
        assert got[0] == got[1], f"output {i}: recorded_capture_ns {got}"


@pytest.mark.slow
def test_lockstep_outputs_do_not_depend_on_the_machines_speed(tmp_path: Path) -> None:
    """A normal run and one whose fusion node sleeps 60 ms before each model pass give the same
    Detections, with the same radar scan paired to each frame as offline pairing gives."""
    end_s = 2.5
    normal, log_normal = lockstep_replay(CITY, tmp_path, end_s=end_s, topics=TOPICS)
    slow, log_slow = lockstep_replay(
        CITY, tmp_path, end_s=end_s, topics=TOPICS, node_args=("--inject-delay-ms", "60")
    )
    assert [o.mode for o in normal].count("fused") >= 0.9 * len(normal), pairs_of(normal)
    same_outputs(normal, slow)
    assert pairs_of(normal) == offline_pairs(CITY, end_s)
    for text in (log_normal, log_slow):  # nothing dropped, nothing judged by the clock
        counters = npc.pipeline_counters(text)
        assert counters.get("stale", 0) == 0 and counters.get("budget_miss", 0) == 0, counters
        assert "lock-step gate" not in text, text  # nothing missing, nothing unstepped


@pytest.mark.slow
@pytest.mark.realdata
def test_imported_real_frames_pair_each_camera_frame_with_its_own_scan(
    astyx_root: Path, tmp_path: Path
) -> None:
    """The importer writes each frame's camera message before its radar message at the same log
    time; lock-step must still fuse every frame with its own scan (not the previous frame's)."""
    recording = tmp_path / "astyx.mcap"
    command = [sys.executable, "-m", "fusion.cli", "import", "astyx", str(astyx_root)]
    subprocess.run(
        [*command, "-o", str(recording), "--frames", "0:12"],
        check=True,
        cwd=REPO,
        timeout=300,
    )
    outputs, _ = lockstep_replay(recording, tmp_path, end_s=None, topics="camera,radar,calibration")
    fused = [o for o in outputs if o.mode == "fused"]
    assert len(fused) == 12, pairs_of(outputs)
    assert all(o.source_seqs["radar"] == o.source_seqs["camera"] for o in fused), pairs_of(fused)
    assert pairs_of(outputs) == offline_pairs(recording, None)
