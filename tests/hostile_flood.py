"""A flood of hostile messages (valid on the wire, hostile in meaning) at a running fusion node and
recorder, with valid traffic in between; what the nodes did with every message.

    .venv/bin/python -m tests.hostile_flood --messages 1000000      # what `make fuzz` runs

The messages come from `tests/hostile.py` (seeded). Publishers do not drop (``ZMQ_XPUB_NODROP``:
the flood waits for the slower node instead), so every message reaches both nodes. After every
`VALID_EVERY` hostile messages a valid radar scan and camera frame are sent and the flood waits
until the fusion node has answered that frame, fused: an input that silenced the node would
stop the run there. Resident memory of both nodes is sampled throughout.

The figure it holds (docs/reliability.md): 0 crashes, 0 inputs silenced, resident memory within
+100 MB of the start, every rejection counted by reason, valid messages all processed and every
message recorded. `tests/test_hostile_flood.py` runs a short flood in `make test`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from fusion.runtime.transport import Publisher, Subscriber
from tests import hostile
from tests import nodeproc as npc

TOPICS = ("calibration", "ego_motion", "radar", "camera")
VALID_EVERY = 500
RSS_EVERY = 2000
#: Longest wait for the fusion node to answer a valid frame (it may be behind the flood).
ANSWER_TIMEOUT_S = 120.0
#: Reasons only queued topics (every message delivered) can have, so their counts are exact.
EXACT_REASONS = ("bad_calibration", "bad_ego_motion", "bad_radar", "radar_too_many_points")


@dataclass
class FloodReport:
    """What was sent and what the nodes said about it."""

    sent: Counter = field(default_factory=Counter)  # topic -> messages sent (all kinds)
    sent_valid: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    expected: dict[str, Counter] = field(default_factory=dict)  # topic -> reason -> count
    answered: int = 0
    #: valid frames answered fused (during the flood the radar queue may lag the latest-only
    #: camera, so some are answered camera_only); the last, sent once the queues drained,
    #: must be fused
    answered_fused: int = 0
    last_fused: bool = False
    seconds: float = 0.0
    rss_mb: dict[str, list[float]] = field(default_factory=dict)
    fusion_log: str = ""
    recorder_log: str = ""
    fusion_exit: int | None = None
    recorder_exit: int | None = None
    recording: Path | None = None


def flood(messages: int, seed: int, folder: Path) -> FloodReport:
    """Run the flood; the report (the assertions are the caller's)."""
    report = FloodReport(recording=folder / "flood.mcap")
    weights = npc.tiny_weights(folder / "tiny.safetensors")
    fusion_log, recorder_log = folder / "fusion.log", folder / "recorder.log"
    pubs = {t: Publisher(t) for t in TOPICS}
    for pub in pubs.values():  # wait for the slowest subscriber instead of dropping
        pub.socket.setsockopt(zmq.XPUB_NODROP, 1)
        pub.socket.setsockopt(zmq.SNDTIMEO, int(ANSWER_TIMEOUT_S * 1000))
    detections = Subscriber("detections", latest_only=False, queue_size=10_000)
    fusion = npc.start(
        "nodes.fusion_node",
        [*npc.fusion_node_args(weights, budget_ms="60000", readers=1), "--stats-period-s", "5"],
        fusion_log,
    )
    recorder = npc.start(
        "nodes.recorder",
        ["-o", str(report.recording), "--topics", ",".join(TOPICS), "--stats-period-s", "5"],
        recorder_log,
    )
    report.rss_mb = {"fusion": [], "recorder": []}
    rng = np.random.default_rng(seed)
    kinds = sorted(hostile.KINDS)
    weights_p = np.array([hostile.WEIGHTS[k] for k in kinds])
    weights_p /= weights_p.sum()
    valid_seq = 0
    last_answer_fused = [False]

    def send(topic: str, msg) -> None:
        pubs[topic].send(msg)
        report.sent[topic] += 1

    def valid_round() -> None:
        """A valid scan and frame; wait until the frame is answered."""
        nonlocal valid_seq
        now = time.monotonic_ns()
        send("ego_motion", npc.ego_motion(valid_seq))
        send("radar", npc.radar_scan(valid_seq, capture_ns=now - 5_000_000))
        send("camera", npc.camera_frame(valid_seq, capture_ns=now))
        for topic in ("ego_motion", "radar", "camera"):
            report.sent_valid[topic] += 1
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            answer = detections.recv(100)
            if answer is not None and answer.source_seqs.get("camera") == valid_seq:
                report.answered += 1
                last_answer_fused[0] = answer.mode == "fused" and answer.valid
                report.answered_fused += last_answer_fused[0]
                break
            if fusion.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"valid frame {valid_seq} was not answered (silenced?); fusion node exit "
                    f"{fusion.poll()}, its log ends:\n{fusion_log.read_text()[-3000:]}"
                )
        valid_seq += 1

    def sample_rss() -> None:
        report.rss_mb["fusion"].append(npc.rss_mb(fusion.pid))
        report.rss_mb["recorder"].append(npc.rss_mb(recorder.pid))

    t0 = time.monotonic()
    try:
        for pub in pubs.values():
            if not pub.wait_for_subscribers(2, npc.START_TIMEOUT_S):
                raise RuntimeError(f"nodes did not subscribe: {fusion_log.read_text()[-2000:]}")
        send("calibration", hostile.calibration(time.monotonic_ns()))
        report.sent_valid["calibration"] += 1
        valid_round()
        sample_rss()  # the start: model loaded and warm, sockets up
        for i in range(messages):
            kind = kinds[int(rng.choice(len(kinds), p=weights_p))]
            now = time.monotonic_ns()
            topic, msg = hostile.make(kind, rng, now)
            reason = hostile.expected(msg, now)
            report.kinds[kind] += 1
            report.expected.setdefault(topic, Counter())[reason or "accepted"] += 1
            send(topic, msg)
            if (i + 1) % VALID_EVERY == 0:
                valid_round()
            if (i + 1) % RSS_EVERY == 0:
                sample_rss()
        time.sleep(2.0)  # the queues drain: the last valid pair must then be fused
        valid_round()
        report.last_fused = report.answered_fused > 0 and last_answer_fused[0]
        sample_rss()
        time.sleep(1.0)  # the recorder writes what is queued
    finally:
        report.seconds = time.monotonic() - t0
        report.fusion_log = npc.stop(fusion, fusion_log, timeout_s=60)
        report.recorder_log = npc.stop(recorder, recorder_log, timeout_s=120)
        report.fusion_exit, report.recorder_exit = fusion.returncode, recorder.returncode
        for pub in pubs.values():
            pub.close()
        detections.close()
    return report


def problems(report: FloodReport) -> list[str]:
    """What the report breaks of the figure, one line each (empty when it holds)."""
    from fusion.logs.reader import RecordingReader

    found = []
    if report.fusion_exit != 0 or report.recorder_exit != 0:
        found.append(f"exit codes: fusion {report.fusion_exit}, recorder {report.recorder_exit}")
    for name, text in (("fusion", report.fusion_log), ("recorder", report.recorder_log)):
        if "Traceback" in text:
            found.append(f"{name} logged a traceback")
    valid_frames = report.sent_valid["camera"]
    if report.answered != valid_frames or not report.last_fused:
        found.append(
            f"{valid_frames} valid frames, {report.answered} answered; the last one fused: "
            f"{report.last_fused}"
        )
    for name, samples in report.rss_mb.items():
        if samples and max(samples) - samples[0] > 100:
            found.append(f"{name} resident memory grew {max(samples) - samples[0]:.0f} MB")
    inputs = npc.input_counters(report.fusion_log)
    for topic in TOPICS:
        c = inputs[topic]
        if c["received"] != report.sent[topic] or c["lost"] or c["rejected"]:
            found.append(f"fusion {topic}: sent {report.sent[topic]}, counters {c}")
        if c["received"] != c["delivered"] + c["skipped"] + c["rejected"]:
            found.append(f"fusion {topic}: counters do not add up: {c}")
    counted = npc.pipeline_counters(report.fusion_log)
    queued = Counter()
    total = Counter()
    for topic, reasons in report.expected.items():
        total.update(reasons)
        if topic != "camera":
            queued.update(reasons)
    for reason in EXACT_REASONS:
        if counted.get(reason, 0) != total[reason]:
            found.append(f"{reason}: counted {counted.get(reason, 0)}, sent {total[reason]}")
    for reason in ("bad_stamp", "bad_fields"):
        if not queued[reason] <= counted.get(reason, 0) <= total[reason]:
            found.append(
                f"{reason}: counted {counted.get(reason, 0)}, sent {queued[reason]} on queued "
                f"topics and {total[reason]} in all"
            )
    with RecordingReader(report.recording) as reader:
        written = Counter(m.topic for m in reader.messages())
    if written != report.sent:
        found.append(f"recorded {dict(written)}, sent {dict(report.sent)}")
    return found


def summary(report: FloodReport) -> str:
    hostile_total = sum(report.kinds.values())
    rss = {name: f"{s[0]:.0f} -> max {max(s):.0f} MB" for name, s in report.rss_mb.items() if s}
    return (
        f"{hostile_total} hostile + {sum(report.sent_valid.values())} valid messages in "
        f"{report.seconds:.0f} s; {report.answered} valid frames answered "
        f"({report.answered_fused} fused); resident memory {rss}; "
        f"counted by reason: {npc.pipeline_counters(report.fusion_log)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    import os

    with tempfile.TemporaryDirectory(prefix="flood-") as tmp:
        os.environ.setdefault("FUSION_IPC_DIR", tempfile.mkdtemp(prefix="fl-"))
        report = flood(args.messages, args.seed, Path(tmp))
        found = problems(report)
        print(summary(report))
    for line in found:
        print(f"PROBLEM: {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
