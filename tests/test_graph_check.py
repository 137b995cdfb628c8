"""Graph wiring checked before anything starts: declared inputs and outputs against the topic
registry and each other, modules and commands that can run; `fusion launch --check`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fusion.cli import main as fusion_main
from fusion.demo import build_graph
from fusion.demo import parse_args as demo_args
from fusion.errors import ConfigError
from fusion.runtime.graph import check_graph, format_check, load_graph, parse_graph
from fusion.runtime.launch import run_graph

GRAPHS = sorted((Path(__file__).parents[1] / "graphs").glob("*.yaml"))


def node(name: str, module: str, inputs: list[str], outputs: list[str]) -> dict:
    return {"name": name, "module": module, "inputs": inputs, "outputs": outputs}


def good() -> dict:
    return {
        "name": "g",
        "nodes": [
            node("player", "nodes.player", [], ["camera", "radar", "calibration", "ego_motion"]),
            node("fusion", "nodes.fusion_node", ["camera", "radar", "calibration"], ["detections"]),
            node("recorder", "nodes.recorder", ["detections"], []),
        ],
    }


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_shipped_graphs_check(path: Path) -> None:
    graph = load_graph(path)
    assert check_graph(graph) == []
    assert all(n.inputs is not None and n.outputs is not None for n in graph.nodes)


@pytest.mark.parametrize("extra", [[], ["--lockstep"], ["--no-viewer"]])
def test_the_demo_graph_checks(tmp_path: Path, extra: list[str]) -> None:
    graph = build_graph(demo_args(extra), tmp_path)
    assert check_graph(graph) == []


@pytest.mark.parametrize(
    "extra", [[], ["--lockstep"], ["--no-viewer"], ["--lockstep", "--no-viewer"]]
)
def test_the_demo_fusion_node_waits_for_every_reader_of_its_outputs(
    tmp_path: Path, extra: list[str]
) -> None:
    """The recorder, the viewer and a lock-step player read the detections; a reader that
    connects while the first ones go out loses them (lock-step answered 119 of 120 frames in
    `make bench`: the recorder had missed the first answer). The fusion node must hold its
    inputs until all of them are connected."""
    graph = build_graph(demo_args(extra), tmp_path)
    readers = [n.name for n in graph.nodes if "detections" in (n.inputs or ())]
    fusion = next(n for n in graph.nodes if n.name == "fusion")
    wait = fusion.command[fusion.command.index("--wait-for-subscribers") + 1]
    assert int(wait) == len(readers), readers


def test_a_good_graph_checks_and_prints_its_wiring() -> None:
    graph = parse_graph(good())
    assert check_graph(graph) == []
    text = format_check(graph, [])
    assert "fusion" in text and "nodes.fusion_node" in text and "detections" in text


def broken(change) -> list[str]:
    raw = good()
    change(raw)
    return check_graph(parse_graph(raw))


def test_unknown_topics_are_named() -> None:
    (problem,) = broken(lambda g: g["nodes"][2]["inputs"].append("lidar"))
    assert "'recorder'" in problem and "'lidar'" in problem and "registry" in problem


def test_an_input_without_a_producer_unless_external() -> None:
    def drop_player(g: dict) -> None:
        del g["nodes"][0]

    problems = broken(drop_player)
    assert len(problems) == 3 and all("no node of the graph publishes" in p for p in problems)

    def external(g: dict) -> None:
        drop_player(g)
        g["external"] = ["camera", "radar", "calibration"]

    assert broken(external) == []


def test_two_producers_unless_shared() -> None:
    def second(g: dict) -> None:
        g["nodes"].append(node("player2", "nodes.player", [], ["camera"]))

    (problem,) = broken(second)
    assert "'camera' has 2 producers (player, player2)" in problem

    def shared(g: dict) -> None:
        second(g)
        g["shared_outputs"] = ["camera"]

    assert broken(shared) == []


def test_undeclared_wiring_and_modules_or_commands_that_cannot_run() -> None:
    def undeclared(g: dict) -> None:
        del g["nodes"][2]["inputs"]

    (problem,) = broken(undeclared)
    assert "'recorder' does not declare its inputs: and outputs:" in problem
    (problem,) = broken(lambda g: g["nodes"][2].update(module="nodes.no_such_node"))
    assert "'nodes.no_such_node' cannot be imported" in problem

    def command(g: dict) -> None:
        g["nodes"].append({"name": "tool", "command": ["/no/such/program"]})

    (problem,) = broken(command)
    assert "'/no/such/program' is not found" in problem


def test_an_external_topic_published_inside_the_graph() -> None:
    (problem,) = broken(lambda g: g.update(external=["detections"]))
    assert "external" in problem and "'fusion'" in problem


def test_launch_check_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert fusion_main(["launch", "--check", str(GRAPHS[0])]) == 0
    assert "wiring checks" in capsys.readouterr().out
    raw = good()
    del raw["nodes"][0]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert fusion_main(["launch", "--check", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("no node of the graph publishes") == 3


def test_the_launcher_refuses_a_graph_that_does_not_check(tmp_path: Path) -> None:
    raw = good()
    del raw["nodes"][0]
    with pytest.raises(ConfigError, match="does not check; nothing was started"):
        run_graph(parse_graph(raw), log_dir=tmp_path / "logs", status=False, monitor_topics=[])
    assert not (tmp_path / "logs").exists()


def test_topics_must_be_lists() -> None:
    raw = good()
    raw["nodes"][1]["inputs"] = "camera"
    with pytest.raises(ConfigError, match="list of topics"):
        parse_graph(raw)


def test_the_demo_plays_the_topics_its_recording_has(tmp_path: Path) -> None:
    """An imported drive may lack a topic (the Astyx import has no ego motion): the demo's
    player is asked only for what the recording holds, and the graph still checks."""
    from fusion.logs.reader import RecordingReader
    from fusion.logs.writer import RecordingWriter

    source = Path(__file__).parents[1] / "recordings" / "city.mcap"
    no_ego = tmp_path / "no_ego.mcap"
    with RecordingReader(source) as reader, RecordingWriter(no_ego) as writer:
        for record in reader.messages(end_ns=reader.start_ns + 500_000_000):
            if record.topic != "ego_motion":
                writer.write(record.topic, record.decode(), log_time_ns=record.log_time_ns)
    graph = build_graph(demo_args(["--recording", str(no_ego), "--lockstep"]), tmp_path)
    player = next(n for n in graph.nodes if n.name == "player")
    played = player.command[player.command.index("--topics") + 1].split(",")
    assert "ego_motion" not in played and {"camera", "radar", "calibration"} <= set(played)
    assert "ego_motion" not in player.outputs
    assert check_graph(graph) == []
