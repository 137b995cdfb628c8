"""Fleet replay on Ray: a local cluster (a head and two worker nodes, each its own raylet, on
loopback) replays the shipped drives and a simulated one with the same per-drive results as the
replays run here without Ray, and as the node process replayed by ``fusion play --lockstep``; a
killed worker's task is retried and the table says so; a bad recording is a row, not a crash;
``fusion fleet eval`` flags a worse model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Ray picks the address of the host's default route unless told it is on a single machine;
# set before Ray is imported (the constant is read then), inherited by every Ray process.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from fusion.cli import main
from fusion.fleet.attempts import LOST, AttemptLog
from fusion.fleet.compare import Figures, Thresholds, regressions
from fusion.fleet.replay import ReplayOptions, detections_digest, replay_recording
from fusion.wire.messages import Detections, empty_detections

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "recordings" / f"{name}.mcap" for name in ("city", "highway", "night")]
#: Each drive's first seconds only, to keep the test short on two busy cores.
END_S = "2"
#: Small object stores: results are small, and the machine is shared.
OBJECT_STORE_BYTES = 80 * 2**20


@pytest.fixture(scope="module")
def ray_cluster():
    """A head (no CPUs: it schedules, the workers replay) and two worker nodes of one CPU each,
    each node its own raylet process, on 127.0.0.1; this process connected as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    from fusion.fleet.cluster import connect

    store = {"object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **store}
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, **store)
        cluster.wait_for_nodes()
        assert connect(cluster.address)
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def drives(tmp_path_factory) -> list[Path]:
    """The shipped drives and a short simulated one."""
    sim = tmp_path_factory.mktemp("fleet") / "sim_highway_7.mcap"
    argv = ["sim", "--scenario", "highway", "--seed", "7", "--duration", "3", "-o", str(sim)]
    assert main(argv) == 0
    return [*SHIPPED, sim]


def fleet(argv: list[str], tmp_path: Path, name: str) -> tuple[int, dict]:
    out = tmp_path / f"{name}.json"
    rc = main(["fleet", *argv, "--json", str(out)])
    return rc, json.loads(out.read_text())


def outcome(row: dict) -> dict:
    """A result row's outcome: everything but timings, attempts and where it ran."""
    timing = ("attempts", "retries", "latency_ms", "load_s", "replay_s", "frames_per_s", "worker")
    return {k: v for k, v in row.items() if k not in timing}


@pytest.mark.slow
def test_the_cluster_gives_each_drive_the_results_of_the_local_replay(
    ray_cluster, drives, tmp_path
) -> None:
    paths = [str(p) for p in drives]
    rc, on_ray = fleet(["replay", *paths, "--address", ray_cluster, "--end", END_S], tmp_path, "r")
    assert rc == 0
    rc, local = fleet(["replay", *paths, "--no-ray", "--end", END_S], tmp_path, "local")
    assert rc == 0
    assert on_ray["run"]["cluster"]["nodes"] == 3 and on_ray["run"]["cluster"]["cpus"] == 2
    assert set(on_ray["run"]["cluster"]["node_addresses"]) == {"127.0.0.1"}
    assert len({r["worker"] for r in on_ray["recordings"]}) >= 2  # in parallel
    for got, want in zip(on_ray["recordings"], local["recordings"], strict=True):
        assert got["ok"] and got["attempts"] == 1, got
        assert outcome(got) == outcome(want), got["recording"]
        assert got["frames"] == got["outputs"] == 40 and got["accuracy"]["mean_ap"] > 0.2
        assert got["latency_ms"]["model"]["n"] == 40
    assert len({r["digest"] for r in on_ray["recordings"]}) == len(drives)
    assert on_ray["overall"]["frames"] == 40 * len(drives)


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_table_says_so(ray_cluster, tmp_path, capsys) -> None:
    city = str(SHIPPED[0])
    argv = ["replay", city, "--address", ray_cluster, "--end", "1", "--inject-kill", "city.mcap"]
    rc, report = fleet(argv, tmp_path, "killed")
    table = capsys.readouterr().out
    assert rc == 0
    (row,) = report["recordings"]
    assert row["ok"] and row["attempts"] == 2 and row["retries"] == [f"attempt 1: {LOST}"]
    assert report["overall"]["retried"] == 1
    assert "retried" in table and LOST in table, table
    local = replay_recording(city, ReplayOptions(end_s=1.0))
    assert row["digest"] == local.digest and row["outputs"] == local.outputs == 20


@pytest.mark.slow
def test_a_bad_recording_is_a_row_and_the_exit_status_says_so(ray_cluster, tmp_path) -> None:
    """Missing and not-a-recording: an error row each, not retried; truncated: replayed up to
    the damage, which the row names; the others go on; the exit status is 1."""
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"not a recording" * 100)
    missing = tmp_path / "missing.mcap"
    truncated = tmp_path / "truncated.mcap"
    truncated.write_bytes(SHIPPED[0].read_bytes()[:1_000_000])
    bad = [str(missing), str(garbage), str(truncated)]
    rc, report = fleet(["replay", *bad, "--address", ray_cluster], tmp_path, "bad")
    assert rc == 1
    rows = {Path(r["recording"]).name: r for r in report["recordings"]}
    damaged = rows["truncated.mcap"]
    assert damaged["ok"] and "damaged at byte offset" in damaged["damage"] and damaged["outputs"]
    assert "No such file" in rows["missing.mcap"]["error"]
    assert "not an MCAP recording" in rows["garbage.mcap"]["error"]
    assert rows["missing.mcap"]["attempts"] == 1  # the recording's fault: not retried
    assert report["overall"]["failed"] == 2 and report["overall"]["damaged"] == 1


@pytest.mark.slow
def test_a_task_gives_the_detections_of_the_node_process(ray_cluster, tmp_path) -> None:
    """The same Detections, field by field and bit for bit (but for the wall-clock stamps), as
    the fusion node process replayed by ``fusion play --lockstep`` (same weights, fp32 torch,
    one thread)."""
    from fusion.fleet.cluster import run_fleet
    from tests.nodeproc import tiny_weights
    from tests.test_lockstep import TOPICS, lockstep_replay, same_outputs

    weights = tiny_weights(tmp_path / "tiny.safetensors")
    city = SHIPPED[0]
    node, _ = lockstep_replay(
        city, tmp_path, end_s=2.5, topics=TOPICS, node_args=("--backend", "torch")
    )
    options = ReplayOptions(weights=str(weights), end_s=2.5)
    (result,) = run_fleet([str(city)], [options], keep_detections=True)
    assert result.ok and result.detections is not None and len(node) == 50
    same_outputs(node, result.detections)


@pytest.mark.slow
def test_eval_flags_a_worse_model(ray_cluster, tmp_path, capsys) -> None:
    from fusion.model import DEFAULT_WEIGHTS

    worse = worse_weights(tmp_path / "worse.safetensors")
    recordings = [str(SHIPPED[0]), str(SHIPPED[1])]
    argv = ["eval", *recordings, "--weights", str(DEFAULT_WEIGHTS), str(worse)]
    rc, report = fleet([*argv, "--address", ray_cluster, "--end", "1"], tmp_path, "eval")
    assert rc == 1
    rows = {row["recording"]: row for row in report["comparison"]}
    assert any("mAP" in r for r in rows["all"]["regressions"]), rows["all"]
    assert "regressions:" in capsys.readouterr().out
    same = ["eval", recordings[0], "--weights", str(DEFAULT_WEIGHTS), str(DEFAULT_WEIGHTS)]
    rc, report = fleet([*same, "--no-ray", "--end", "0.5", "--max-p99-ratio", "100"], tmp_path, "s")
    assert rc == 0 and not report["comparison"][0]["regressions"]


def worse_weights(path: Path) -> Path:
    """The committed weights with the detection heads' parameters halved: worse detections."""
    import torch

    from fusion.model import DEFAULT_WEIGHTS, load_weights, save_weights

    model, _ = load_weights(DEFAULT_WEIGHTS)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.startswith("heads."):
                tensor.mul_(0.5)
    return save_weights(path, model)


@pytest.mark.slow
def test_eval_compares_two_commits_code(tmp_path, capsys) -> None:
    """A scratch repository with this tree's package committed twice, the second time with
    worse default weights: B regresses; the worktrees are gone afterwards."""
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    shutil.copytree(REPO / "fusion", repo / "fusion", ignore=shutil.ignore_patterns("__pycache__"))

    def git(*args: str) -> None:
        ident = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
        subprocess.run(["git", "-C", str(repo), *ident, *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "good")
    shipped = repo / "fusion" / "model" / "weights" / "sim_default.safetensors"
    worse_weights(shipped)
    git("commit", "-qam", "worse")
    argv = ["eval", str(SHIPPED[1]), "--commits", "HEAD~1", "HEAD", "--repo", str(repo)]
    rc, report = fleet([*argv, "--no-ray", "--end", "1"], tmp_path, "commits")
    assert rc == 1, capsys.readouterr()
    assert report["a"]["rev"] == "HEAD~1" and report["b"]["rev"] == "HEAD"
    assert any("mAP" in r for r in report["comparison"][0]["regressions"]), report["comparison"]
    assert "fusion-fleet-commits-" in report["results_b"][0]["weights"]  # the worktree's own
    listed = subprocess.run(
        ["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True, check=True
    )
    assert len(listed.stdout.splitlines()) == 1, listed.stdout


def test_regressions_name_what_got_worse() -> None:
    limits = Thresholds()
    a = Figures(mean_ap=0.5, p99_ms=40.0, drops=0, invalid=0, failed=0)
    assert regressions(a, a, limits) == []
    assert regressions(a, Figures(0.49, 55.0, 0, 0, 0), limits) == []  # within the limits
    worse = regressions(a, Figures(0.4, 80.0, 3, 1, 1), limits)
    assert worse == ["1 more failed", "mAP 0.500 -> 0.400", "p99 40.0 -> 80.0 ms", "drops 0 -> 3",
                     "invalid 0 -> 1"]  # fmt: skip
    assert regressions(Figures(None, None, 0, 0, 0), Figures(None, None, 0, 0, 0), limits) == []


def test_attempts_left_without_a_reason_were_lost_with_their_worker() -> None:
    log = AttemptLog()
    assert log.begin(0) == 1
    log.begin(0)
    log.failed(0, "ValueError: boom")
    log.begin(0)
    assert log.report(0, finished=True) == (
        3,
        [f"attempt 1: {LOST}", "attempt 2: ValueError: boom"],
    )
    log.begin(1)
    assert log.report(1, finished=False) == (1, [f"attempt 1: {LOST}"])


def test_the_digest_sees_every_field_but_the_wall_clock_stamps() -> None:
    def out(**changes) -> Detections:
        base = Detections(objects=empty_detections(1), mode="fused", source_seqs={"camera": 3})
        base.trace = {"recorded_capture_ns": 5, "decoded": 1}
        return base.replace(**changes)

    digest = detections_digest([out()])
    assert detections_digest([out(capture_ns=99, trace={"recorded_capture_ns": 5})]) == digest
    assert detections_digest([out(mode="camera_only")]) != digest
    assert detections_digest([out(trace={"recorded_capture_ns": 6})]) != digest
    assert detections_digest([out(health={"score": 0.1})]) != digest
    moved = empty_detections(1)
    moved["x"] = 1e-6
    assert detections_digest([out(objects=moved)]) != digest


def test_save_writes_the_drive_with_its_detections_on_its_clock(tmp_path) -> None:
    """``--save``: the recording's messages as recorded and the replay's Detections beside
    them, each at its camera frame's recorded capture time; the results do not change."""
    from fusion.logs.reader import RecordingReader

    city = SHIPPED[0]
    plain = replay_recording(str(city), ReplayOptions(end_s=1.0))
    result = replay_recording(
        str(city), ReplayOptions(end_s=1.0, save_dir=str(tmp_path)), keep_detections=True
    )
    assert result.ok and result.digest == plain.digest and result.outputs == 20
    saved = Path(result.saved)
    assert saved == tmp_path / "city.replayed.mcap"
    with RecordingReader(city) as source, RecordingReader(saved) as copy:
        assert set(copy.topics) == set(source.topics) | {"detections"}
        originals = [
            (m.topic, m.log_time_ns, [bytes(f) for f in m.frames]) for m in source.messages()
        ]
        copied = [
            (m.topic, m.log_time_ns, [bytes(f) for f in m.frames])
            for m in copy.messages()
            if m.topic != "detections"
        ]
        assert copied == originals  # byte for byte, at their log times
        frames = {m.seq: m for _, m in ((r.topic, r.decode()) for r in source.messages(["camera"]))}
        answers = [r.decode() for r in copy.messages(["detections"])]
    assert len(answers) == result.outputs
    for det, replayed in zip(answers, result.detections, strict=True):
        frame = frames[det.source_seqs["camera"]]
        assert (det.capture_ns, det.clock) == (frame.capture_ns, frame.clock)
        assert det.objects.tobytes() == replayed.objects.tobytes()
