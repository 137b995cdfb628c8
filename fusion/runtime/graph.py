"""Graphs of node processes: the YAML format, and the check that runs before anything starts.

A graph file names its nodes, their arguments, the topics each reads and publishes, and the
endpoints they share::

    name: replay
    endpoints:                 # optional: topic -> URL for every node (else ipc on this host)
      camera: tcp://127.0.0.1:5550
    external: [radar]          # optional: topics published outside this graph (another host)
    shared_outputs: []         # optional: topics more than one node may publish
    epoch_delay_s: 10          # simulated producers start their drive this long after launch
    nodes:
      - name: fusion
        module: nodes.fusion_node        # run as `python -m nodes.fusion_node ARGS`
        args: [--budget-ms, "50"]
        inputs: [camera, radar, calibration, ego_motion]
        outputs: [detections]
        restart: on-failure              # on-failure (default) | always | never
        watchdog_s: 20                   # restart it when its heartbeat stops this long (0: off)
      - name: player
        module: nodes.player
        args: [recordings/city.mcap]
        inputs: []
        outputs: [camera, radar, calibration, ego_motion]
        start_delay_s: 1.0               # wait for the others to come up first
        finishes_graph: true             # when it exits 0 the whole graph stops

As in a dora-rs dataflow, the wiring is declared, so `check_graph` can verify it against the
topic registry before a process starts: every topic exists, every input has a producer in the
graph (or is external), no topic has two producers unless shared, every ``module:`` node declares
its ``inputs:`` and ``outputs:`` and its module can be found, every ``command:`` can be run.
``fusion launch --check GRAPH.yaml`` prints the wiring and the problems; `fusion.runtime.launch`
runs the same check before it starts a graph.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fusion.errors import ConfigError
from fusion.wire import services

RESTART_POLICIES = ("on-failure", "always", "never")
#: A node whose heartbeat stops this long is restarted: ample for a model's slowest pass on a
#: busy CPU (about a second), short enough that a hung node is noticed.
DEFAULT_WATCHDOG_S = 20.0


@dataclass
class NodeSpec:
    name: str
    command: list[str]
    restart: str = "on-failure"
    start_delay_s: float = 0.0
    finishes_graph: bool = False
    env: dict[str, str] = field(default_factory=dict)
    #: the Python module run with ``python -m`` (None for a plain command)
    module: str | None = None
    #: topics read and published; None: not declared (allowed for a plain command only)
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    #: the node is restarted when its heartbeat stops for this long (0: never); it is armed by
    #: the first beat, so start-up (a model's warm-up) does not count
    watchdog_s: float = DEFAULT_WATCHDOG_S

    @classmethod
    def of_module(
        cls,
        name: str,
        module: str,
        args: list[str],
        *,
        inputs: tuple[str, ...],
        outputs: tuple[str, ...],
        **options: Any,
    ) -> NodeSpec:
        """A node that runs ``python -m MODULE ARGS`` with this interpreter."""
        return cls(
            name,
            [sys.executable, "-m", module, *args],
            module=module,
            inputs=inputs,
            outputs=outputs,
            **options,
        )


@dataclass
class GraphSpec:
    name: str
    nodes: list[NodeSpec]
    endpoints: dict[str, str] = field(default_factory=dict)
    #: simulated sources start this long after the launch (time for the model to warm up)
    epoch_delay_s: float = 10.0
    #: topics published outside the graph (another host, a sensor bridge)
    external: tuple[str, ...] = ()
    #: topics more than one node of the graph may publish
    shared_outputs: tuple[str, ...] = ()
    #: the folder of the graph's ipc sockets, so that no other graph on the host shares its
    #: topics (None: the host's, `fusion.wire.services.ipc_dir`)
    ipc_dir: str | None = None


def replay_graph(
    name: str,
    recording: str | Path,
    out: Path,
    fusion_args: list[str],
    *,
    topics: tuple[str, ...],
    lockstep: bool,
    player_args: list[str] = (),
    readers: tuple[NodeSpec, ...] = (),
    ipc_dir: str | None = None,
) -> GraphSpec:
    """A recording replayed through the fusion node: the player of `topics` (lock-step, or
    `player_args` say its pace) -> ``nodes.fusion_node`` with `fusion_args` -> a recorder of its
    Detections in ``out/detections.mcap``, with `readers` (a viewer) beside the recorder.

    Every node that reads the Detections (the recorder, `readers`, a lock-step player) must be
    connected before the first one goes out, or it loses it; the fusion node is told to wait for
    as many as the graph has (``--wait-for-subscribers``), counted from the nodes' inputs."""
    timing = ["--lockstep"] if lockstep else []
    recorder = NodeSpec.of_module(
        "recorder",
        "nodes.recorder",
        ["-o", str(out / "detections.mcap"), "--topics", "detections"],
        inputs=("detections",),
        outputs=(),
    )
    player = NodeSpec.of_module(
        "player",
        "nodes.player",
        [str(recording), *timing, "--topics", ",".join(topics), "--no-progress", *player_args],
        # in lock-step the player waits for the detections that answer each frame
        inputs=("detections",) if lockstep else (),
        outputs=(*topics, "replay_control"),
        finishes_graph=True,
        restart="never",
    )
    waiting = sum("detections" in (n.inputs or ()) for n in (recorder, *readers, player))
    fusion = NodeSpec.of_module(
        "fusion",
        "nodes.fusion_node",
        [*fusion_args, *timing, "--wait-for-subscribers", str(waiting)],
        inputs=(*topics, "replay_control"),
        outputs=("detections",),
    )
    return GraphSpec(name=name, nodes=[recorder, fusion, *readers, player], ipc_dir=ipc_dir)


def load_graph(path: str | Path, extra_args: dict[str, list[str]] | None = None) -> GraphSpec:
    """Read a graph file (its structure is checked; its wiring is `check_graph`'s job);
    `extra_args` appends arguments to named nodes."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"graph file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"graph file {path} is not valid YAML: {exc}") from exc
    return parse_graph(raw, str(path), extra_args)


def _topics(raw: Any, what: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ConfigError(f"{what} must be a list of topics, got {raw!r}")
    return tuple(str(t) for t in raw)


def parse_graph(
    raw: Any, source: str = "graph", extra_args: dict[str, list[str]] | None = None
) -> GraphSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), list) or not raw["nodes"]:
        raise ConfigError(f"{source}: needs a non-empty 'nodes' list")
    endpoints = {str(k): str(v) for k, v in (raw.get("endpoints") or {}).items()}
    for topic, url in endpoints.items():
        services.endpoint(topic, {topic: url})  # checks topic and URL scheme
    nodes = []
    for i, item in enumerate(raw["nodes"]):
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{source}: node #{i} needs a 'name'")
        name = str(item["name"])
        args = [str(a) for a in item.get("args", [])] + list((extra_args or {}).get(name, []))
        restart = item.get("restart", "on-failure")
        if restart not in RESTART_POLICIES:
            raise ConfigError(f"{source}: node {name!r} restart must be one of {RESTART_POLICIES}")
        watchdog_s = item.get("watchdog_s", DEFAULT_WATCHDOG_S)
        if not isinstance(watchdog_s, int | float) or watchdog_s < 0:
            raise ConfigError(f"{source}: node {name!r} watchdog_s must be seconds >= 0")
        options = {
            "restart": restart,
            "watchdog_s": float(watchdog_s),
            "start_delay_s": float(item.get("start_delay_s", 0.0)),
            "finishes_graph": bool(item.get("finishes_graph", False)),
            "env": {str(k): str(v) for k, v in (item.get("env") or {}).items()},
        }
        inputs = _topics(item.get("inputs"), f"{source}: node {name!r} inputs")
        outputs = _topics(item.get("outputs"), f"{source}: node {name!r} outputs")
        if "module" in item:
            command = [sys.executable, "-m", str(item["module"]), *args]
            module = str(item["module"])
        elif "command" in item:
            command, module = [str(c) for c in item["command"]] + args, None
        else:
            raise ConfigError(f"{source}: node {name!r} needs 'module' or 'command'")
        nodes.append(
            NodeSpec(name, command, module=module, inputs=inputs, outputs=outputs, **options)
        )
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: node names must be unique, got {names}")
    return GraphSpec(
        name=str(raw.get("name", Path(source).stem)),
        nodes=nodes,
        endpoints=endpoints,
        epoch_delay_s=float(raw.get("epoch_delay_s", 10.0)),
        external=_topics(raw.get("external"), f"{source}: external") or (),
        shared_outputs=_topics(raw.get("shared_outputs"), f"{source}: shared_outputs") or (),
    )


def producers(graph: GraphSpec) -> dict[str, list[str]]:
    """Topic -> the names of the nodes that declare it as an output."""
    out: dict[str, list[str]] = {}
    for node in graph.nodes:
        for topic in node.outputs or ():
            out.setdefault(topic, []).append(node.name)
    return out


def check_graph(graph: GraphSpec) -> list[str]:
    """Every problem with the graph's wiring, one line each (empty when it checks)."""
    known = services.SERVICES
    made_by = producers(graph)
    problems = []
    for topic in graph.external:
        if topic not in known:
            problems.append(f"external topic {topic!r} is not in the registry ({sorted(known)})")
        elif topic in made_by:
            problems.append(
                f"topic {topic!r} is listed as external but node {made_by[topic][0]!r} publishes it"
            )
    for node in graph.nodes:
        if node.module is not None and (node.inputs is None or node.outputs is None):
            problems.append(
                f"node {node.name!r} does not declare its inputs: and outputs: "
                "(lists of topics; [] for none)"
            )
        for topic in (*(node.inputs or ()), *(node.outputs or ())):
            if topic not in known:
                problems.append(
                    f"node {node.name!r}: topic {topic!r} is not in the registry "
                    f"(fusion/wire/services.py has {', '.join(sorted(known))})"
                )
        for topic in node.inputs or ():
            if topic in known and topic not in made_by and topic not in graph.external:
                problems.append(
                    f"node {node.name!r} reads {topic!r}, which no node of the graph publishes "
                    "(add its producer, or list it under external:)"
                )
        problems += _runnable(node)
    for topic, names in made_by.items():
        if len(names) > 1 and topic not in graph.shared_outputs:
            problems.append(
                f"topic {topic!r} has {len(names)} producers ({', '.join(names)}); a topic has "
                "one publisher unless it is listed under shared_outputs:"
            )
    return problems


def _runnable(node: NodeSpec) -> list[str]:
    if node.module is not None:
        try:
            found = importlib.util.find_spec(node.module) is not None
        except (ImportError, ValueError):
            found = False
        return [] if found else [f"node {node.name!r}: module {node.module!r} cannot be imported"]
    program = node.command[0] if node.command else ""
    if shutil.which(program) is None and not Path(program).is_file():
        return [f"node {node.name!r}: command {program!r} is not found"]
    return []


def format_check(graph: GraphSpec, problems: list[str]) -> str:
    """The wiring as a table (node, what it runs, inputs, outputs) and the problems found."""
    rows = [("node", "runs", "inputs", "outputs")]
    for node in graph.nodes:
        runs = node.module or " ".join(node.command[:1])
        rows.append(
            (
                node.name,
                runs,
                "not declared" if node.inputs is None else ", ".join(node.inputs) or "-",
                "not declared" if node.outputs is None else ", ".join(node.outputs) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"graph {graph.name}: {len(graph.nodes)} nodes"]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, [*widths, 0], strict=True)).rstrip()
        for row in rows
    ]
    if graph.external:
        lines.append(f"external topics: {', '.join(graph.external)}")
    if problems:
        lines.append(f"{len(problems)} problem{'s' if len(problems) > 1 else ''}:")
        lines += [f"- {p}" for p in problems]
    else:
        lines.append("wiring checks: every input has a producer, every topic is in the registry")
    return "\n".join(lines)
