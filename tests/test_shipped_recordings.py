"""The committed drives are exactly what their documented command makes."""

from __future__ import annotations

import filecmp

import pytest

from fusion.logs.reader import RecordingReader
from fusion.sim.shipped import RECORDINGS, SHIPPED, make


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_regenerating_gives_the_same_bytes(name: str, tmp_path) -> None:
    assert filecmp.cmp(make(name, tmp_path), RECORDINGS / name, shallow=False), (
        f"recordings/{name} differs from what its command makes; "
        "regenerate with: .venv/bin/python -m fusion.sim.shipped"
    )


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_drive_is_complete_and_small(name: str) -> None:
    path = RECORDINGS / name
    assert path.stat().st_size < 8 * 1024 * 1024
    summary = RecordingReader(path).summary()
    counts = {t.topic: t.count for t in summary.topics.values()}
    assert set(counts) == {"calibration", "camera", "radar", "ego_motion", "ground_truth"}
    assert counts["camera"] >= 160 and counts["radar"] >= 100
