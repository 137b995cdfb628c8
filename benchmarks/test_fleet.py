"""Fleet replay: what Ray costs per recording, and what a second worker gives.

The same set (the three shipped drives and a simulated one, the first `END_S` seconds of each)
is replayed by the command a user runs, each in a fresh process:

- ``fusion fleet replay SET --no-ray`` (the local command: one recording after another here),
- ``fusion fleet replay SET --address local --workers 1`` (a local Ray instance, one worker),
- ``fusion fleet replay SET --address local --workers 2``,

and every run must give the same per-recording results (digests, accuracy, counts). Two tables:

- **fleet: Ray overhead**: wall time of the whole command (Ray's start, the workers' imports and
  model loads included) and of the replays alone (from the first task submitted to the last
  result), Ray with one worker against the local command; the difference divided by the number
  of recordings is Ray's overhead per recording.
- **scaling: fleet replay 1 -> 2 Ray workers**: the replays alone. On a 2-core machine shared
  with other work, 0.5x is the ideal and anything the other work takes shows as a ratio above it:
  the run records the load average before and after (above 2, the cores were not ours).

    .venv/bin/pytest benchmarks/test_fleet.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "recordings" / f"{name}.mcap" for name in ("city", "highway", "night")]
END_S = 4.0
#: The longest one command may take on two busy cores.
COMMAND_TIMEOUT_S = 600.0
OVERHEAD = "fleet: Ray overhead vs the local command"
SCALING = "scaling: fleet replay 1 -> 2 Ray workers"


def fleet_command(recordings: list[Path], where: list[str], out: Path) -> tuple[float, dict]:
    """Run ``fusion fleet replay`` in a fresh process; its wall time (s) and JSON report."""
    argv = [sys.executable, "-m", "fusion.cli", "fleet", "replay", *map(str, recordings)]
    argv += [*where, "--end", str(END_S), "--json", str(out)]
    started = time.perf_counter()
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return seconds, json.loads(out.read_text())


def outcomes(report: dict) -> list[dict]:
    return [
        {k: row[k] for k in ("recording", "digest", "accuracy", "frames", "outputs", "drops")}
        for row in report["recordings"]
    ]


@pytest.mark.slow
def test_fleet_overhead_and_scaling(benchmark, ratios, tmp_path) -> None:
    sim = tmp_path / "sim_city_11.mcap"
    from fusion.cli import main

    argv = ["sim", "--scenario", "city", "--seed", "11", "--duration", str(END_S), "-o", str(sim)]
    assert main(argv) == 0
    recordings = [*SHIPPED, sim]
    runs = {
        "no Ray": ["--no-ray"],
        "Ray, 1 worker": ["--address", "local", "--workers", "1"],
        "Ray, 2 workers": ["--address", "local", "--workers", "2"],
    }
    measured: dict[str, tuple[float, dict]] = {}

    def measure() -> None:
        for k, (name, where) in enumerate(runs.items()):
            measured[name] = fleet_command(recordings, where, tmp_path / f"run{k}.json")

    load_before = os.getloadavg()[0]
    benchmark.pedantic(measure, rounds=1, iterations=1)
    local = outcomes(measured["no Ray"][1])
    for name in runs:
        assert outcomes(measured[name][1]) == local, f"{name} differs from the local command"
    figures = {}
    for name, (command_s, report) in measured.items():
        figures[name] = {
            "command_s": command_s,
            "replays_s": report["run"]["wall_s"],
            "ray_start_s": report["run"]["connect_s"],
            # a task's own replay time: it grows when the workers do not each have a free core
            "replay_s_per_recording": sum(r["replay_s"] for r in report["recordings"])
            / len(report["recordings"]),
        }
        if name != "Ray, 2 workers":
            ratios.add(OVERHEAD, "whole command", name, command_s, baseline="no Ray", unit="s")
            ratios.add(
                OVERHEAD, "replays only", name, report["run"]["wall_s"], baseline="no Ray", unit="s"
            )
        if name != "no Ray":
            column = name.removeprefix("Ray, ")
            ratios.add(
                SCALING,
                "replays only",
                column,
                report["run"]["wall_s"],
                baseline="1 worker",
                unit="s",
            )
    one, two, local_s = (figures[n] for n in ("Ray, 1 worker", "Ray, 2 workers", "no Ray"))
    benchmark.extra_info.update(
        {
            "fleet": figures,
            "recordings": len(recordings),
            "end_s": END_S,
            "load_average_1min_before": load_before,
            "load_average_1min_after": os.getloadavg()[0],
            "cpus": os.cpu_count(),
            "scaling_2_over_1_workers": two["replays_s"] / one["replays_s"],
            "ray_overhead_ratio_command": one["command_s"] / local_s["command_s"],
            "ray_overhead_per_recording_s": (one["command_s"] - local_s["command_s"])
            / len(recordings),
        }
    )
    print(json.dumps(benchmark.extra_info, indent=1))
