"""Process replay: the shipped drive through the fusion node gives the committed outputs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.process_replay import (
    CONFIGS,
    REGENERATE,
    compare,
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
    assert outputs and all(o.valid for o in outputs)
    problems = compare(config, to_arrays(outputs, config.ignore_fields), dict(np.load(path)))
    assert not problems, (
        f"{config.name} outputs changed:\n  "
        + "\n  ".join(problems)
        + f"\nIf the change is intended, regenerate the reference with: {REGENERATE}"
    )


def test_compare_catches_a_moved_box() -> None:
    config = CONFIGS[0]
    from fusion.wire.messages import Detections, empty_detections

    objects = empty_detections(2)
    objects["x"] = [10.0, 20.0]
    out = [Detections(objects=objects, source_seqs={"camera": 0})]
    want = to_arrays(out, config.ignore_fields)
    moved = objects.copy()
    moved["x"][1] += 0.01
    got = to_arrays([Detections(objects=moved, source_seqs={"camera": 0})], config.ignore_fields)
    assert compare(config, want, want) == []
    assert any("objects.x" in p for p in compare(config, got, want))
    fewer = to_arrays(
        [Detections(objects=objects[:1], source_seqs={"camera": 0})], config.ignore_fields
    )
    assert any("counts" in p for p in compare(config, fewer, want))
