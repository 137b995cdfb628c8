"""``fusion fleet eval``: two models on the same recordings, and what got worse.

Each recording and the whole set are reduced to a few figures (`Figures`): mean AP where there
is ground truth, the lock-step latency's p99 (a frame's receipt to its decoded Detections), the
inputs refused or dropped, the invalid outputs and whether the replay failed. B regresses
against A when its mean AP is lower by more than ``max_ap_drop``, its p99 higher by more than
``max_p99_ratio`` times *and* by more than ``min_p99_rise_ms`` (timings on busy shared cores
wander; a rise of a few ms is not a finding), it drops or refuses more than ``max_extra_drops``
more inputs, gives more invalid outputs, or fails where A did not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table

from fusion.fleet.replay import LOCKSTEP_LATENCY, RecordingResult


@dataclass(frozen=True)
class Thresholds:
    max_ap_drop: float = 0.02  # mean AP, absolute
    max_p99_ratio: float = 1.5  # B's p99 / A's p99
    min_p99_rise_ms: float = 5.0  # and B's p99 - A's p99 (ms)
    max_extra_drops: int = 0  # more refused or dropped inputs


@dataclass(frozen=True)
class Figures:
    mean_ap: float | None
    p99_ms: float | None
    drops: int
    invalid: int
    failed: int


def figures(result: RecordingResult) -> Figures:
    p99 = result.latency_ms.get(LOCKSTEP_LATENCY, {}).get("p99")
    return Figures(result.mean_ap, p99, result.dropped, result.invalid, int(not result.ok))


def overall_figures(total: dict) -> Figures:
    p99 = total["latency_ms"].get(LOCKSTEP_LATENCY, {}).get("p99")
    drops = sum(total["drops"].values())
    return Figures(total["mean_ap"], p99, drops, total["invalid"], total["failed"])


def _known(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def regressions(a: Figures, b: Figures, limits: Thresholds) -> list[str]:
    """Why B is worse than A (empty: it is not)."""
    found = []
    if b.failed > a.failed:
        found.append(f"{b.failed - a.failed} more failed")
    if _known(a.mean_ap) and _known(b.mean_ap) and a.mean_ap - b.mean_ap > limits.max_ap_drop:
        found.append(f"mAP {a.mean_ap:.3f} -> {b.mean_ap:.3f}")
    if (
        _known(a.p99_ms)
        and _known(b.p99_ms)
        and b.p99_ms > limits.max_p99_ratio * a.p99_ms
        and b.p99_ms - a.p99_ms > limits.min_p99_rise_ms
    ):
        found.append(f"p99 {a.p99_ms:.1f} -> {b.p99_ms:.1f} ms")
    if b.drops - a.drops > limits.max_extra_drops:
        found.append(f"drops {a.drops} -> {b.drops}")
    if b.invalid > a.invalid:
        found.append(f"invalid {a.invalid} -> {b.invalid}")
    return found


def comparison(
    names: Sequence[str], a: Sequence[Figures], b: Sequence[Figures], limits: Thresholds
) -> list[dict]:
    """One row per name: both sides' figures and B's regressions against A."""
    return [
        {
            "recording": name,
            "a": fa.__dict__,
            "b": fb.__dict__,
            "regressions": regressions(fa, fb, limits),
        }
        for name, fa, fb in zip(names, a, b, strict=True)
    ]


def _fmt(value: float | None, digits: int) -> str:
    return f"{value:.{digits}f}" if _known(value) else "-"


def comparison_table(rows: Sequence[dict], title: str) -> Table:
    table = Table(title=title)
    table.add_column("recording")
    for name in ("mAP A", "mAP B", "p99 A ms", "p99 B ms", "drops A", "drops B"):
        table.add_column(name, justify="right")
    table.add_column("verdict")
    for row in rows:
        a, b = row["a"], row["b"]
        verdict = "[red]" + "; ".join(row["regressions"]) + "[/red]" if row["regressions"] else "ok"
        table.add_row(
            row["recording"],
            _fmt(a["mean_ap"], 3),
            _fmt(b["mean_ap"], 3),
            _fmt(a["p99_ms"], 1),
            _fmt(b["p99_ms"], 1),
            str(a["drops"]),
            str(b["drops"]),
            verdict,
        )
    return table
