"""Property-based fuzzing of the fusion node's logic with messages valid on the wire and hostile
in meaning (`tests/hostile.py`), through a real (tiny) model.

Hypothesis draws sequences of hostile messages; each goes through the wire codec and
`FusionPipeline` with the real `Detector` (its preprocessing kernels divide by calibration values,
its blank radar-only image is allocated from the calibrated size). The properties: nothing
raises; every message the validation rejects is counted once under its reason; every output
encodes within the header limit with finite objects, and is ``fused`` only when built from usable
radar points; and valid inputs sent after the hostile ones are still fused (nothing silenced).

``make test`` runs `FUZZ_EXAMPLES` sequences (``FUSION_FUZZ_EXAMPLES``, default 60); ``make fuzz``
runs thousands.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion.perception.pipeline import FusionPipeline, PipelineConfig
from fusion.wire import codec
from fusion.wire.messages import Detections
from tests import hostile
from tests import nodeproc as npc

FUZZ_EXAMPLES = int(os.environ.get("FUSION_FUZZ_EXAMPLES", "60"))
MS = 1_000_000


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory):
    from fusion.model.detector import Detector

    weights = npc.tiny_weights(tmp_path_factory.mktemp("model") / "tiny.safetensors")
    return Detector.load(Path(weights), device="cpu", threads=1, backend="torch")


class Clock:
    def __init__(self) -> None:
        self.t = 10_000_000 * MS

    def __call__(self) -> int:
        return self.t


def valid_pair(seq: int, t: int) -> list[tuple[str, object]]:
    """A radar scan, a camera frame 5 ms later and a scan 70 ms after it (which settles the
    frame's match), on the valid senders."""
    frame = npc.camera_frame(seq, capture_ns=t)
    frame.image = np.ascontiguousarray(frame.image)
    return [
        ("radar", npc.radar_scan(2 * seq, capture_ns=t - 5 * MS)),
        ("camera", frame),
        ("radar", npc.radar_scan(2 * seq + 1, capture_ns=t + 70 * MS)),
    ]


def check_output(out: Detections) -> None:
    header = codec.encode("detections", out)[1]
    assert len(header) < codec.MAX_HEADER_BYTES
    for field in ("score", "x", "y", "z", "l", "w", "h", "yaw", "vx", "vy"):
        assert np.isfinite(out.objects[field]).all(), field
    if out.mode == "fused":
        assert out.valid and "radar" in out.source_seqs


steps = st.lists(
    st.tuples(st.sampled_from(sorted(hostile.KINDS)), st.integers(0, 2**32 - 1)),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=steps)
def test_hostile_messages_never_crash_silence_or_mislabel(detector, steps) -> None:
    clock = Clock()
    pipe = FusionPipeline(
        detector, PipelineConfig(budget_ms=10_000, sync_deadline_ms=1.0), clock_ns=clock
    )
    pipe.add("calibration", hostile.calibration(clock.t))
    outputs: list[Detections] = []
    seq = 0
    for kind, seed in steps:
        # stamped after the valid frame, so a hostile frame is not merely "late"
        hostile_message = hostile.make(kind, np.random.default_rng(seed), clock.t + 10 * MS)
        for topic, msg in [*valid_pair(seq, clock.t), hostile_message]:
            _, wire = codec.decode(codec.encode(topic, msg))  # what a node receives
            reason = hostile.expected(wire, clock.t)
            before = Counter(pipe.counters)
            pipe.add(topic, wire)
            if reason is not None:
                counted = Counter(pipe.counters)
                counted.subtract(before)
                assert +counted == Counter({reason: 1}), (kind, reason, +counted)
        clock.t += 20 * MS
        outputs += pipe.step()
        clock.t += 30 * MS
        seq += 1
    # After all that, valid inputs are fused again.
    answered = []
    for _ in range(3):
        for topic, msg in valid_pair(seq, clock.t):
            pipe.add(topic, codec.decode(codec.encode(topic, msg))[1])
        clock.t += 20 * MS
        answered += pipe.step()
        clock.t += 30 * MS
        seq += 1
    outputs += answered
    for out in outputs:
        check_output(out)
    last = [o for o in answered if o.source_seqs.get("camera") == seq - 1]
    assert last and last[0].mode == "fused" and last[0].valid, [
        (o.source_seqs, o.mode, o.valid) for o in answered
    ]


def test_every_kind_is_valid_on_the_wire() -> None:
    """Each kind encodes with our encoder: any client could send it."""
    rng = np.random.default_rng(0)
    for kind in hostile.KINDS:
        for _ in range(20 if kind != "radar_huge" else 1):
            topic, msg = hostile.make(kind, rng, 10**12)
            got_topic, got = codec.decode(codec.encode(topic, msg))
            assert got_topic == topic and type(got) is type(msg)
