"""A short flood of hostile messages (valid on the wire, hostile in meaning) at a running fusion
node and recorder (`tests/hostile_flood.py`; `make fuzz` sends a million): no crash, no input
silenced, memory flat, every rejection counted by reason, every valid frame answered and every
message recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import hostile_flood

MESSAGES = 20_000


@pytest.mark.slow
def test_hostile_flood_is_counted_and_silences_nothing(tmp_path: Path) -> None:
    report = hostile_flood.flood(MESSAGES, seed=3, folder=tmp_path)
    print(hostile_flood.summary(report))
    assert hostile_flood.problems(report) == []
    assert set(report.kinds) == set(hostile_flood.hostile.KINDS) - {"radar_huge"} or set(
        report.kinds
    ) == set(hostile_flood.hostile.KINDS)
