"""Shared benchmark plumbing: per-test ipc folders and ratio tables printed at the end.

A benchmark calls `ratios.add(table, row, column, value_s)`; at the end of the run each table is
printed with every column also as a ratio to the table's baseline column, so a comparison is
always between figures measured in the same run on the same machine.
"""

from __future__ import annotations

import os

# The fusion node runs with passive OpenMP waiting (nodes/fusion_node.py); measure the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest


class RatioTables:
    def __init__(self) -> None:
        self.tables: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
        self.baselines: dict[str, str] = {}
        self.units: dict[str, str] = {}

    def add(
        self, table: str, row: str, column: str, value: float, *, baseline: str, unit: str = "ms"
    ) -> None:
        self.tables[table][row][column] = value
        self.baselines[table] = baseline
        self.units[table] = unit

    def render(self) -> str:
        out = []
        for name, rows in self.tables.items():
            base = self.baselines[name]
            columns = sorted({c for r in rows.values() for c in r}, key=lambda c: (c != base, c))
            unit = self.units[name]
            out.append(f"\n{name} (median {unit}; ratio to {base})")
            out.append("| case | " + " | ".join(columns) + " |")
            out.append("|---" * (len(columns) + 1) + "|")
            for row, values in rows.items():
                cells = []
                for c in columns:
                    if c not in values:
                        cells.append("-")
                        continue
                    ratio = values[c] / values[base] if values.get(base) else float("nan")
                    cells.append(f"{values[c]:.3f} ({ratio:.2f}x)")
                out.append(f"| {row} | " + " | ".join(cells) + " |")
        return "\n".join(out)

    def to_json(self) -> dict:
        return {
            "tables": {k: dict(v) for k, v in self.tables.items()},
            "baselines": self.baselines,
            "units": self.units,
        }


_RATIOS = RatioTables()


@pytest.fixture(scope="session")
def ratios() -> RatioTables:
    return _RATIOS


@pytest.fixture(autouse=True)
def ipc_dir(monkeypatch: pytest.MonkeyPatch):
    path = tempfile.mkdtemp(prefix="fxb-")
    monkeypatch.setenv("FUSION_IPC_DIR", path)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def pytest_report_header(config) -> str:
    """Which machine the figures come from: the CPU's model and the features that decide the
    backends (AVX2, AVX-512, native bf16)."""
    from fusion.model.backends import cpu_summary

    return f"CPU: {cpu_summary()}"


def pytest_terminal_summary(terminalreporter) -> None:
    if _RATIOS.tables:
        terminalreporter.write_line(_RATIOS.render())
        out = Path(__file__).parent / "ratios.json"
        out.write_text(json.dumps(_RATIOS.to_json(), indent=1))
