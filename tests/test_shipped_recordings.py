"""The committed drives are exactly what their documented command makes, on any x86-64 CPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fusion.logs.reader import RecordingReader
from fusion.logs.writer import RecordingWriter
from fusion.sim.shipped import RECORDINGS, SHIPPED, first_difference, make


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_regenerating_gives_the_same_bytes(name: str, tmp_path) -> None:
    why = first_difference(make(name, tmp_path), RECORDINGS / name)
    assert why is None, (
        f"recordings/{name} differs from what its command makes: {why}; if the simulator was "
        "changed on purpose, regenerate with: .venv/bin/python -m fusion.sim.shipped"
    )


def test_a_difference_names_the_message_and_the_field(tmp_path) -> None:
    """A one-ULP change in one ego motion value is found and named."""
    src = RECORDINGS / "night.mcap"
    changed = tmp_path / "night.mcap"
    with RecordingReader(src) as reader, RecordingWriter(changed) as writer:
        for rec in reader.messages():
            msg = rec.decode()
            if rec.topic == "ego_motion" and msg.seq == 7:
                msg.speed_mps = float(np.nextafter(msg.speed_mps, np.inf))
            msg.trace = {}
            writer.write(rec.topic, msg, log_time_ns=rec.log_time_ns)
    copy = tmp_path / "copy.mcap"
    shutil.copy(src, copy)
    assert first_difference(copy, src) is None
    why = first_difference(changed, src)
    assert why is not None and "ego_motion seq 7" in why and "speed_mps is" in why, why


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_drive_is_complete_and_small(name: str) -> None:
    path = RECORDINGS / name
    assert path.stat().st_size < 8 * 1024 * 1024
    summary = RecordingReader(path).summary()
    counts = {t.topic: t.count for t in summary.topics.values()}
    assert set(counts) == {"calibration", "camera", "radar", "ego_motion", "ground_truth"}
    assert counts["camera"] >= 160 and counts["radar"] >= 100
