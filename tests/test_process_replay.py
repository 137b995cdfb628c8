"""Process replay: recorded drives through the fusion node's logic give the committed outputs."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.logs.player import CONTROL_TOPIC
from fusion.wire.messages import Detections, empty_detections
from tests.process_replay import (
    CONFIGS,
    REGENERATE,
    compare,
    lockstep_stream,
    main,
    reference_path,
    replay_fusion,
    to_arrays,
)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_outputs_match_the_reference(config) -> None:
    path = reference_path(config)
    assert path.exists(), f"no reference {path}; make it with: {REGENERATE}"
    outputs = replay_fusion(config)
    assert outputs
    assert all(o.valid for o in outputs) or not config.all_valid
    problems = compare(config, to_arrays(outputs, config.ignore_fields), dict(np.load(path)))
    assert not problems, (
        f"{config.name} outputs changed:\n  "
        + "\n  ".join(problems)
        + f"\nIf the change is intended, regenerate the references with: {REGENERATE}"
    )


def test_the_table_covers_the_cases_and_feeds_what_the_player_sends() -> None:
    names = {c.name for c in CONFIGS}
    assert {
        "city",
        "night",
        "highway",
        "camera_only",
        "radar_only",
        "faults",
        "clock_jump",
    } <= names
    config = next(c for c in CONFIGS if c.name == "camera_only")
    items = list(lockstep_stream(config))
    topics = {t for t, _ in items}
    assert "radar" not in topics and CONTROL_TOPIC in topics
    frames = [m for t, m in items if t == "camera"]
    # The player's restamping: the recorded spacing, one offset (the window's start at 0).
    assert frames[0].capture_ns == 0 and frames[1].capture_ns - frames[0].capture_ns == 50_000_000
    assert frames[0].trace["recorded_capture_ns"] == 0
    assert items[-1][0] == CONTROL_TOPIC and items[-1][1].final


def outputs_with(xs: list[float], mode: str = "fused") -> list[Detections]:
    objects = empty_detections(len(xs))
    objects["x"] = xs
    objects["score"] = 0.9  # above the references' score cut, so each object is compared
    return [Detections(objects=objects, mode=mode, source_seqs={"camera": 0})]


def test_compare_names_the_first_differing_output_and_field() -> None:
    config = CONFIGS[0]
    want = to_arrays(outputs_with([10.0, 20.0]))
    assert compare(config, want, want) == []
    moved = compare(config, to_arrays(outputs_with([10.0, 20.01])), want)
    assert any("output 0" in p and "objects[1].x is 20.01" in p for p in moved), moved
    assert any("largest float change" in p for p in moved), moved
    fewer = compare(config, to_arrays(outputs_with([10.0])), want)
    assert any("1 objects, reference 2" in p for p in fewer), fewer
    other_mode = compare(config, to_arrays(outputs_with([10.0, 20.0], "camera_only")), want)
    assert any("mode is 'camera_only', reference 'fused'" in p for p in other_mode), other_mode
    assert any("0 outputs, the reference has 1" in p for p in compare(config, to_arrays([]), want))


def test_a_failure_prints_the_command_that_regenerates(monkeypatch, capsys) -> None:
    import tests.process_replay as replay

    monkeypatch.setattr(replay, "replay_fusion", lambda config: outputs_with([1.0]))
    assert main(["--only", "city"]) == 1
    out = capsys.readouterr().out
    assert "city: FAILED" in out and "first difference" in out and REGENERATE in out


def test_update_shows_what_changed_before_writing(monkeypatch, capsys, tmp_path) -> None:
    import shutil

    import tests.process_replay as replay

    shutil.copy(reference_path(CONFIGS[0]), tmp_path / "city.npz")
    monkeypatch.setattr(replay, "REFERENCE_DIR", tmp_path)
    monkeypatch.setattr(replay, "REPO", tmp_path)
    monkeypatch.setattr(replay, "replay_fusion", lambda config: outputs_with([1.0]))
    assert main(["--update", "--only", "city"]) == 0
    out = capsys.readouterr().out
    assert "city: changed: 1 outputs" in out and "reference: 80 outputs" in out
    assert "first difference" in out and "wrote city.npz" in out
    assert main(["--only", "city"]) == 0  # the new reference holds
