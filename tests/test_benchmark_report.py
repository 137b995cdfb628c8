"""`benchmarks.report`: targets met or missed, the figures, the profile summary."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is not an installed package; load the report module from its file.
_SPEC = importlib.util.spec_from_file_location(
    "benchmarks_report", Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"
)
report = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = report
_SPEC.loader.exec_module(report)


def e2e(mode: str, p99_ms: float = 40.0, fps: float = 50.0, drops: int = 0) -> dict:
    stage = {"p50": p99_ms / 2, "p95": p99_ms * 0.9, "p99": p99_ms, "max": p99_ms * 1.1, "n": 3}
    return {
        "group": f"end-to-end {mode}",
        "name": f"test_{mode}[city]",
        "fullname": f"benchmarks/test_end_to_end.py::test_{mode.replace(' ', '_')}[city]",
        "stats": {"median": 10.0},
        "extra_info": {
            "end_to_end": True,
            "recording": "city",
            "mode": mode,
            "device": "cpu",
            "outputs": 200 - drops,
            "camera_published": 200,
            "drops": drops,
            "budget_ms": 50.0,
            "budget_misses": 0,
            "modes": {"fused": 200 - drops},
            "fusion_counters": {},
            "camera_input": {"received": 200},
            "lockstep_timeouts": 0,
            "latency_ms": {"model": stage, "capture -> detections": stage},
            "capture_to_detections_ms": [p99_ms / 2, p99_ms * 0.8, p99_ms],
            "frames_per_s": fps,
            "cpu_percent": {"fusion": 90.0, "player": 5.0},
            "target_p99_ms": 60.0,
            "target_frames_per_s": 40.0,
            "load_avg_1m": 0.5,
        },
    }


def results(p99_ms: float = 40.0, fps: float = 50.0, drops: int = 0) -> dict:
    return {
        "datetime": "2026-11-29T12:00:00",
        "commit_info": {"id": "abcdef123456", "dirty": False},
        "benchmarks": [e2e("real time", p99_ms, drops=drops), e2e("lock-step", fps=fps)],
    }


RATIOS = {
    "tables": {"transport round trip, ipc": {"720p BGR": {"raw pyzmq": 1.0, "ours": 1.5}}},
    "baselines": {"transport round trip, ipc": "raw pyzmq"},
    "units": {"transport round trip, ipc": "ms"},
}


def verdicts(text: str) -> dict[str, str]:
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {row[0].lstrip("| "): row[3].rstrip(" |") for row in rows if len(row) == 5}


def test_targets_met_and_missed(tmp_path: Path) -> None:
    text = report.build_report(results(p99_ms=90.0, fps=50.0), RATIOS, tmp_path, [])
    found = verdicts(text)
    assert found["real time p99 capture -> detections, city (cpu)"] == "**missed, 1.50x off**"
    assert found["lock-step frames/s through the graph, city (cpu)"] == "met"
    assert found["transport, 1280x720 BGR over ipc, ours / raw pyzmq (round trip)"].startswith(
        "**missed"
    )
    assert "biggest remaining cost is the **model** stage" in text
    assert (tmp_path / "figures" / "latency_city.png").stat().st_size > 1000


def test_profile_summary_counts_the_loop_only(tmp_path: Path) -> None:
    profile = tmp_path / "city_lockstep.txt"
    loop = (
        "main (nodes/fusion_node.py:95);step (fusion/perception/pipeline.py:10);"
        "Detector.infer (fusion/model/detector.py:5);forward (torch/nn.py:1)"
    )
    profile.write_text(
        f"main (nodes/fusion_node.py:95);build_detector (nodes/fusion_node.py:39) 500\n"
        f"{loop} 30\n"
        f"main (nodes/fusion_node.py:95);Inputs.poll (fusion/runtime/node.py:5) 10\n"
    )
    lines, top = report.profile_summary(profile)
    assert top == ("Detector.infer (fusion/model/detector.py:5)", 75.0)
    assert "40 samples" in lines[0]
    assert "| model | 75.0 |" in lines
    assert "| receive | 0.0 |" not in lines


def test_main_writes_the_report(tmp_path: Path) -> None:
    now = tmp_path / "now.json"
    now.write_text(json.dumps(results(p99_ms=80.0)))
    ratios = tmp_path / "ratios.json"
    ratios.write_text(json.dumps(RATIOS))
    args = [str(now), "--ratios", str(ratios), "--out", str(tmp_path / "out")]
    assert report.main(args) == 0
    assert "## Targets" in (tmp_path / "out" / "REPORT.md").read_text()


@pytest.mark.parametrize("bad", ["{not json", ""])
def test_unreadable_results_exit_2(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(bad)
    assert report.main([str(path), "--out", str(tmp_path)]) == 2


def test_every_benchmark_module_imports() -> None:
    """`make test` does not run the benchmarks; this keeps them at least importable and
    collectable (a renamed function once broke `make bench` unseen)."""
    import subprocess

    command = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider"]
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [*command, "benchmarks"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
