"""The launcher: graph files, restarts with backoff, clean stop, finishing nodes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from fusion.errors import ConfigError
from fusion.runtime.graph import load_graph, parse_graph
from fusion.runtime.launch import BACKOFF_START_S, Launcher, run_graph


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def supervise_for(launcher: Launcher, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        launcher.supervise()
        time.sleep(0.02)


@pytest.mark.parametrize(
    "raw, match",
    [
        ({}, "nodes"),
        ({"nodes": [{"module": "x"}]}, "name"),
        ({"nodes": [{"name": "a"}]}, "module"),
        ({"nodes": [{"name": "a", "module": "x", "restart": "sometimes"}]}, "restart"),
        ({"nodes": [{"name": "a", "module": "x"}, {"name": "a", "module": "y"}]}, "unique"),
        (
            {"nodes": [{"name": "a", "module": "x"}], "endpoints": {"lidar": "ipc:///x"}},
            "unknown topic",
        ),
        ({"nodes": [{"name": "a", "module": "x"}], "endpoints": {"radar": "udp://x"}}, "ipc://"),
    ],
)
def test_bad_graphs_are_config_errors(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_graph(raw)


def test_load_graph_file(tmp_path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "name: demo\nendpoints: {radar: 'tcp://127.0.0.1:5999'}\n"
        "nodes:\n  - {name: a, module: nodes.player, args: [x.mcap], finishes_graph: true}\n"
    )
    graph = load_graph(path, extra_args={"a": ["--loop"]})
    assert graph.name == "demo" and graph.endpoints == {"radar": "tcp://127.0.0.1:5999"}
    assert graph.nodes[0].command[-3:] == ["nodes.player", "x.mcap", "--loop"]
    assert graph.nodes[0].finishes_graph
    with pytest.raises(ConfigError, match="not found"):
        load_graph(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("nodes: [")
    with pytest.raises(ConfigError, match="YAML"):
        load_graph(tmp_path / "bad.yaml")


def test_crashing_node_is_restarted_with_backoff(tmp_path) -> None:
    graph = parse_graph({"nodes": [{"name": "crash", "command": py("import sys; sys.exit(3)")}]})
    launcher = Launcher(graph, tmp_path)
    launcher.start()
    supervise_for(launcher, 2.5)  # starts at 0, 0.5, 1.5 (+1 s), next at 3.5 (+2 s)
    state = launcher.nodes["crash"]
    assert 2 <= state.restarts <= 3
    assert state.backoff_s >= 4 * BACKOFF_START_S
    assert state.last_exit == 3
    launcher.stop()


def test_killed_node_is_restarted_and_downtime_reported(tmp_path) -> None:
    graph = parse_graph(
        {"nodes": [{"name": "sleeper", "command": py("import time; time.sleep(60)")}]}
    )
    launcher = Launcher(graph, tmp_path)
    launcher.start()
    try:
        supervise_for(launcher, 0.3)
        first = launcher.nodes["sleeper"].process
        os.kill(first.pid, signal.SIGKILL)
        supervise_for(launcher, 1.5)
        state = launcher.nodes["sleeper"]
        assert state.restarts == 1 and state.running and state.process.pid != first.pid
        assert 0.3 < state.downtime_s < 1.5
        row = launcher.summary_rows()[0]
        assert row[:3] == ("sleeper", "running", 1) and row[4] == "SIGKILL"
    finally:
        launcher.stop()
    assert not launcher.nodes["sleeper"].running


def test_stop_kills_a_node_that_ignores_sigint(tmp_path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    graph = parse_graph({"nodes": [{"name": "stubborn", "command": py(stubborn)}]})
    launcher = Launcher(graph, tmp_path, stop_grace_s=0.5)
    launcher.start()
    supervise_for(launcher, 0.5)
    t0 = time.monotonic()
    launcher.stop()
    assert time.monotonic() - t0 < 3
    assert launcher.nodes["stubborn"].last_exit == -signal.SIGKILL


def test_finishing_node_ends_the_graph_and_logs_are_kept(tmp_path) -> None:
    graph = parse_graph(
        {
            "nodes": [
                {
                    "name": "worker",
                    "command": py("import time; print('working', flush=True); time.sleep(60)"),
                },
                {
                    "name": "player",
                    "command": py("print('played')"),
                    "finishes_graph": True,
                    "start_delay_s": 0.3,
                },
            ]
        }
    )
    t0 = time.monotonic()
    launcher = run_graph(
        graph, log_dir=tmp_path, status=False, monitor_topics=[], max_duration_s=20
    )
    assert launcher.finished and time.monotonic() - t0 < 10
    assert launcher.nodes["worker"].last_exit == -signal.SIGINT
    assert "played" in (tmp_path / "player.log").read_text()
    assert "working" in (tmp_path / "worker.log").read_text()


def test_a_finishing_node_that_fails_for_good_ends_the_graph(tmp_path) -> None:
    """A player that exits with an error and is never restarted cannot finish the graph later:
    the graph stops (it would otherwise wait forever) and the exit code says why."""
    graph = parse_graph(
        {
            "nodes": [
                {"name": "worker", "command": py("import time; time.sleep(60)")},
                {
                    "name": "player",
                    "command": py("import sys; print('no such topic'); sys.exit(2)"),
                    "finishes_graph": True,
                    "restart": "never",
                },
            ]
        }
    )
    launcher = run_graph(
        graph, log_dir=tmp_path, status=False, monitor_topics=[], max_duration_s=60
    )
    assert launcher.finished
    assert launcher.nodes["player"].last_exit == 2
    assert launcher.nodes["worker"].last_exit == -signal.SIGINT


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "graphs").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_graphs_parse(path) -> None:
    graph = load_graph(path)
    assert graph.nodes and all(n.command for n in graph.nodes)


HANGS_AFTER_A_SECOND = """
import time
from fusion.runtime import heartbeat
end = time.monotonic() + 1.0
while time.monotonic() < end:
    heartbeat.beat()
    time.sleep(0.05)
time.sleep(600)  # hung: still there, no longer beating
"""


def test_a_node_that_stops_answering_is_killed_and_restarted(tmp_path) -> None:
    """The watchdog: a node whose heartbeat stops (it hangs; it does not exit) is killed and
    restarted, counted as a hang and shown in the status table; a node that never beat (a
    plain command, or one still starting) is left alone."""
    graph = parse_graph(
        {
            "nodes": [
                {"name": "hangs", "command": py(HANGS_AFTER_A_SECOND), "watchdog_s": 1.0},
                {"name": "quiet", "command": py("import time; time.sleep(60)"), "watchdog_s": 1},
            ]
        }
    )
    launcher = Launcher(graph, tmp_path)
    launcher.start()
    try:
        deadline = time.monotonic() + 60
        state = launcher.nodes["hangs"]
        while not (state.hangs >= 1 and state.running and state.last_beat_ns is not None):
            assert time.monotonic() < deadline, launcher.summary_rows()
            launcher.supervise()
            time.sleep(0.05)
        rows = {row[0]: row for row in launcher.summary_rows()}
        _, status, restarts, _, last_exit, beat, hangs = rows["hangs"]
        assert (status, restarts, hangs, last_exit) == ("running", 1, 1, "SIGKILL (hung)")
        assert beat.endswith("s ago")
        assert rows["quiet"][1:3] == ("running", 0) and rows["quiet"][5:] == ("-", 0)
    finally:
        launcher.stop()


def test_heartbeat_file_and_summary(tmp_path) -> None:
    from fusion.runtime import heartbeat

    path = tmp_path / "hb"
    beats = heartbeat.Heartbeat(str(path))
    for i in range(3):
        beats.beat(i * 10**9)
    record = heartbeat.read(path)
    assert record is not None and record.pid == os.getpid() and record.beats == 3
    assert beats.summary() == "heartbeat 3 (longest gap 1000 ms)"
    assert heartbeat.read(tmp_path / "missing") is None


@pytest.mark.slow
def test_a_real_node_stopped_with_sigstop_is_restarted(tmp_path) -> None:
    """A recorder node under the launcher beats from its loop; stopped with SIGSTOP (there, not
    answering), the watchdog kills and restarts it, and the new one beats and records."""
    graph = parse_graph(
        {
            "nodes": [
                {
                    "name": "recorder",
                    "module": "nodes.recorder",
                    "args": ["-o", str(tmp_path / "r.mcap"), "--topics", "ego_motion"],
                    "inputs": [],
                    "outputs": [],
                    "watchdog_s": 3,
                }
            ]
        }
    )
    launcher = Launcher(graph, tmp_path / "logs")
    launcher.start()
    state = launcher.nodes["recorder"]

    def supervise_until(done, what: str) -> None:
        deadline = time.monotonic() + 90
        while not done():
            assert time.monotonic() < deadline, (what, launcher.summary_rows())
            launcher.supervise()
            time.sleep(0.05)

    try:
        supervise_until(lambda: state.last_beat_ns is not None, "first heartbeat")
        stopped = state.process.pid
        os.kill(stopped, signal.SIGSTOP)
        supervise_until(lambda: state.hangs == 1 and state.running, "restart")
        assert state.process.pid != stopped
        supervise_until(lambda: state.last_beat_ns is not None, "heartbeat of the new process")
        assert launcher.summary_rows()[0][4] == "SIGKILL (hung)"
    finally:
        launcher.stop()
    assert sorted(p.name for p in tmp_path.glob("r*.mcap")) == ["r.1.mcap", "r.mcap"]


def test_topic_table_counts_budget_misses_and_outputs_flagged_by_sensor_health() -> None:
    from fusion.runtime.launch import TopicMonitor
    from fusion.runtime.testing import FakeSubscriber
    from fusion.wire.messages import Detections, empty_detections

    detections = FakeSubscriber("detections", latest_only=False)
    for seq, (ok, miss) in enumerate([(1.0, False), (0.0, False), (0.0, True)]):
        health = {"score": 2.0 if ok else 9.0, "ok": ok}
        detections.push(
            Detections(objects=empty_detections(), seq=seq, health=health, budget_miss=miss)
        )
    monitor = TopicMonitor([], {}, subscribers={"detections": detections})
    monitor.poll()
    (row,) = monitor.rows()
    assert row[0] == "detections" and row[2] == "3" and row[5] == "1" and row[6] == "2"


def test_a_graph_with_its_own_ipc_folder_gives_it_to_every_node(tmp_path, monkeypatch) -> None:
    """A graph with `ipc_dir` (an evaluation's replay) keeps its sockets there whatever the
    host's folder is, so it shares no topic with another graph on the host."""
    monkeypatch.setenv("FUSION_IPC_DIR", str(tmp_path / "host"))
    graph = parse_graph({"nodes": [{"name": "a", "command": py("pass")}]})
    graph.ipc_dir = str(tmp_path / "own")
    env = Launcher(graph, tmp_path).environment(graph.nodes[0])
    assert env["FUSION_IPC_DIR"] == str(tmp_path / "own") and (tmp_path / "own").is_dir()
    graph.ipc_dir = None
    assert Launcher(graph, tmp_path).environment(graph.nodes[0])["FUSION_IPC_DIR"] == str(
        tmp_path / "host"
    )
