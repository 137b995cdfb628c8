"""The fleet's tables: one row per recording and one for the whole set, and the JSON.

`overall` sums what adds up (frames, outputs, modes, drops, health flags), pools every frame's
latency per stage into one histogram (so fleet percentiles are of all frames, not a mean of
percentiles), and takes the mean over recordings with ground truth of their mean AP. Throughput
is given twice: per task (outputs / time spent replaying) and for the fleet (outputs / wall time
of the whole run, what the cluster delivered).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from fusion.fleet.replay import LOCKSTEP_LATENCY, RecordingResult, percentiles

#: Width of the tables when the output is not a terminal (a log, a pipe): wide enough for every
#: column, so no cell is cut.
LOG_COLUMNS = 200
#: Stages shown in the latency table, in pipeline order.
SHOWN_STAGES = ("sync", "preprocess", "model", "decode", LOCKSTEP_LATENCY)


def overall(results: Sequence[RecordingResult], wall_s: float) -> dict:
    """The whole set's figures (see the module docstring)."""
    ok = [r for r in results if r.ok]
    modes: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    samples: dict[str, list[float]] = {}
    for r in ok:
        modes.update(r.modes)
        drops.update(r.drops)
        for stage, values in r.stage_samples_ms.items():
            samples.setdefault(stage, []).extend(values)
    aps = [r.mean_ap for r in ok if r.mean_ap is not None and not math.isnan(r.mean_ap)]
    outputs = sum(r.outputs for r in ok)
    replay_s = sum(r.replay_s for r in ok)
    return {
        "recordings": len(results),
        "failed": len(results) - len(ok),
        "damaged": sum(bool(r.damage) for r in results),
        "retried": sum(r.attempts > 1 for r in results),
        "frames": sum(r.frames for r in ok),
        "outputs": outputs,
        "modes": dict(modes),
        "invalid": sum(r.invalid for r in ok),
        "health_flagged": sum(r.health_flagged for r in ok),
        "drops": dict(sorted(drops.items())),
        "latency_ms": percentiles(samples),
        "replay_s": replay_s,
        "wall_s": wall_s,
        "frames_per_s_per_task": outputs / replay_s if replay_s > 0 else 0.0,
        "frames_per_s_fleet": outputs / wall_s if wall_s > 0 else 0.0,
        "mean_ap": sum(aps) / len(aps) if aps else None,
        "recordings_with_truth": len(aps),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _modes(modes: dict[str, int]) -> str:
    short = {"fused": "F", "camera_only": "C", "radar_only": "R"}
    return " ".join(f"{short.get(k, k)}{v}" for k, v in sorted(modes.items())) or "-"


def _latency(latency_ms: dict, stage: str, key: str) -> str:
    return _fmt(latency_ms.get(stage, {}).get(key))


def results_table(results: Sequence[RecordingResult], total: dict, title: str) -> Table:
    """Per recording: status and attempts, frames, outputs/s, lock-step latency p50/p99,
    modes, invalid outputs, drops and refusals, health flags, mean AP, digest; then the set."""
    table = Table(title=title)
    for name in ("recording", "status", "tries", "frames", "out/s", "p50 ms", "p99 ms"):
        table.add_column(name, justify="left" if name in ("recording", "status") else "right")
    for name in ("modes", "invalid", "drops", "flagged", "mAP", "digest"):
        table.add_column(name, justify="left" if name in ("modes", "digest") else "right")
    for r in results:
        status = "ok" if r.ok else f"[red]{r.error}[/red]"
        if r.damage:
            status += f" [yellow](damaged: {r.damage})[/yellow]"
        tries = str(r.attempts) + (" [yellow]retried[/yellow]" if r.attempts > 1 else "")
        table.add_row(
            r.name,
            status,
            tries,
            str(r.frames),
            _fmt(r.frames_per_s),
            _latency(r.latency_ms, LOCKSTEP_LATENCY, "p50"),
            _latency(r.latency_ms, LOCKSTEP_LATENCY, "p99"),
            _modes(r.modes),
            str(r.invalid),
            str(r.dropped),
            str(r.health_flagged),
            _fmt(r.mean_ap, 3),
            r.digest or "-",
        )
    table.add_section()
    failed, damaged = total["failed"], total["damaged"]
    problems = [f"{failed} failed"] * bool(failed) + [f"{damaged} damaged"] * bool(damaged)
    table.add_row(
        f"all {total['recordings']}",
        f"[red]{', '.join(problems)}[/red]" if problems else "ok",
        f"{total['retried']} retried",
        str(total["frames"]),
        f"{_fmt(total['frames_per_s_fleet'])} fleet",
        _latency(total["latency_ms"], LOCKSTEP_LATENCY, "p50"),
        _latency(total["latency_ms"], LOCKSTEP_LATENCY, "p99"),
        _modes(total["modes"]),
        str(total["invalid"]),
        str(sum(total["drops"].values())),
        str(total["health_flagged"]),
        _fmt(total["mean_ap"], 3),
        "",
    )
    return table


def latency_table(total: dict) -> Table:
    """The set's latency per stage over every frame (ms)."""
    table = Table(title="latency per stage, every frame of the set (ms)")
    table.add_column("stage")
    for key in ("p50", "p95", "p99", "max", "n"):
        table.add_column(key, justify="right")
    for stage in SHOWN_STAGES:
        p = total["latency_ms"].get(stage)
        if p is not None:
            values = [_fmt(p[k]) for k in ("p50", "p95", "p99", "max")]
            table.add_row(stage, *values, str(p["n"]))
    return table


def console() -> Console:
    """A console on stdout: the terminal's width, or `LOG_COLUMNS` into a file or pipe."""
    return Console(width=None if sys.stdout.isatty() else LOG_COLUMNS)


def print_results(
    results: Sequence[RecordingResult], total: dict, title: str, out: Console | None = None
) -> None:
    """The per-recording table, why tasks were retried, the drops by reason, the latencies."""
    out = out or console()
    out.print(results_table(results, total, title))
    for r in results:
        for note in r.retries:
            out.print(f"  {r.name} retried: {note}")
    if total["drops"]:
        out.print(f"drops and refusals by reason: {total['drops']}")
    out.print(latency_table(total))
