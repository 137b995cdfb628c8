"""Player and recorder: timing, ordering, lock-step determinism, counts, signals and recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fusion.cli import main as fusion_main
from fusion.errors import ConfigError
from fusion.logs.player import Player
from fusion.logs.reader import RecordingReader
from fusion.logs.recorder import Recorder
from fusion.logs.writer import RecordingWriter
from fusion.runtime.lockstep import StepGate
from fusion.runtime.testing import FakePublisher, FakeSubscriber
from fusion.runtime.transport import Publisher, Subscriber
from fusion.wire import codec
from fusion.wire.messages import DETECTION_DTYPE, Detections, Message
from tests.test_recording import MS, camera, drive, radar, write_drive

REPO = Path(__file__).resolve().parents[1]
#: Drives in these tests contain every registry topic the player may publish.
TOPICS = ("calibration", "camera", "ego_motion", "detections", "radar")


class Log:
    """Publishers that append (topic, message) to one shared list, in publish order."""

    def __init__(self, topics=TOPICS) -> None:
        self.sent: list[tuple[str, Message]] = []
        self.publishers = {t: _LoggingPublisher(t, self.sent) for t in topics}


class _LoggingPublisher(FakePublisher):
    def __init__(self, topic: str, log: list) -> None:
        super().__init__(topic)
        self._log = log
        self.on_send = None

    def send(self, msg: Message) -> None:
        super().send(msg)
        self._log.append((self.topic, self.sent[-1]))
        if self.on_send is not None:
            self.on_send(self.sent[-1])


@pytest.fixture
def recording(tmp_path) -> tuple[Path, list]:
    messages = sorted(drive(1.0), key=lambda m: m[2])
    write_drive(tmp_path / "d.mcap", messages, chunk_size=4096)
    return tmp_path / "d.mcap", messages


def test_realtime_replay_keeps_order_timing_buffers_and_restamps(recording) -> None:
    path, messages = recording
    out = Log()
    with RecordingReader(path) as reader:
        t0 = time.monotonic_ns()
        stats = Player(reader, out.publishers, rate=10.0).run()
    assert stats.published == len(messages) and stats.passes == 1
    assert [(t, m.seq) for t, m in out.sent] == [(t, m.seq) for t, m, _ in messages]
    first_log = messages[0][2]
    origin = out.sent[0][1].capture_ns - (messages[0][1].capture_ns - first_log)
    assert t0 <= origin <= t0 + 50 * MS
    for (topic, sent), (_, original, log_ns) in zip(out.sent, messages, strict=True):
        # The stamps keep the recorded spacing (one offset for the replay); the pace is 10x.
        assert sent.capture_ns - origin == original.capture_ns - first_log
        assert sent.trace["published"] >= origin + int((log_ns - first_log) / 10)  # not early
        assert sent.trace["recorded_capture_ns"] == original.capture_ns
        assert sent.clock == "monotonic"
        assert [bytes(f) for f in codec.encode(topic, sent)[2:]] == [
            bytes(f) for f in codec.encode(topic, original)[2:]
        ]


def test_window_topics_and_loop(recording) -> None:
    path, messages = recording
    out = Log()
    with RecordingReader(path) as reader:
        player = Player(
            reader,
            out.publishers,
            max_speed=True,
            start_s=0.25,
            end_s=0.5,
            topics=["camera"],
            loop=True,
        )
        stats = player.run(
            on_progress=lambda s: player.stop() if s.passes == 3 else None, progress_period_s=0
        )
    window = [m.seq for t, m, log_ns in messages if t == "camera" and 250 * MS <= log_ns < 500 * MS]
    assert window == [5, 6, 7, 8, 9]
    assert [m.seq for _, m in out.sent][: 2 * len(window)] == window * 2
    assert stats.passes == 3 and stats.per_topic == {"camera": len(out.sent)}


def test_bad_arguments_are_config_errors(recording) -> None:
    path, _ = recording
    with RecordingReader(path) as reader:
        pubs = Log().publishers
        for kwargs in (
            {"rate": 20.0},
            {"rate": 0.05},
            {"start_s": 2.0, "end_s": 1.0},
            {"topics": ["nope"]},
        ):
            with pytest.raises(ConfigError):
                Player(reader, pubs, **kwargs)
        with pytest.raises(ConfigError, match="subscriber"):
            Player(reader, pubs, lockstep=True)


def lockstep_run(path: Path, answer_every: int = 1, depth: int = 2) -> tuple[list, object]:
    """Lock-step replay against a fake consumer that answers the camera frames each step
    settles (each answer after a stale one, to prove the player matches seqs), skipping every
    `answer_every`-th frame's answer."""
    topics = [t for t in TOPICS if t != "detections"]
    out = Log(topics)
    answers = FakeSubscriber("detections")
    frames: list[Message] = []
    out.publishers["camera"].on_send = frames.append
    steps: list[Message] = []
    control = _LoggingPublisher("replay_control", steps)

    def answer(step: Message) -> None:
        while frames and (step.final or frames[0].capture_ns + 80 * MS <= step.sent_until_ns):
            seq = frames.pop(0).seq
            stale = Detections(objects=np.zeros(0, DETECTION_DTYPE), source_seqs={"camera": -1})
            answers.push(stale)
            if answer_every == 1 or seq % answer_every:
                answers.push(
                    Detections(objects=np.zeros(0, DETECTION_DTYPE), source_seqs={"camera": seq})
                )

    control.on_send = answer
    with RecordingReader(path) as reader:
        stats = Player(
            reader,
            {**out.publishers, "replay_control": control},
            lockstep=True,
            answers=answers,
            lockstep_timeout_s=0.02,
            lockstep_depth=depth,
        ).run()
    return [
        (t, m.seq, bytes(codec.encode(t, m)[2]) if t == "camera" else b"") for t, m in out.sent
    ], stats


@pytest.mark.parametrize("depth", [1, 2])
def test_lockstep_is_deterministic_and_waits_for_each_answer(recording, depth: int) -> None:
    path, messages = recording
    first, stats = lockstep_run(path, depth=depth)
    second, _ = lockstep_run(path, depth=depth)
    assert first == second
    assert [(t, s) for t, s, _ in first] == [
        (t, m.seq) for t, m, _ in messages if t != "detections"
    ]
    assert stats.lockstep_answers == 20 and stats.lockstep_timeouts == 0
    _, stats = lockstep_run(path, answer_every=4, depth=depth)
    assert stats.lockstep_timeouts == 5 and stats.lockstep_answers == 15


def consumer(stop: threading.Event, seen: list) -> None:
    """A stand-in fusion node: takes its inputs in the player's order (`StepGate`), logs them,
    and at each step answers the camera frames whose window the step closed."""
    gate = StepGate()
    frames: list[Message] = []
    subs = {
        "replay_control": Subscriber("replay_control"),
        "camera": Subscriber("camera", latest_only=False),
        "radar": Subscriber("radar"),
    }
    with Publisher("detections") as pub:
        try:
            while not stop.is_set():
                for topic, sub in subs.items():
                    while (msg := sub.recv(5)) is not None:
                        gate.add(topic, msg)
                for topic, msg in gate.release():
                    if topic != "replay_control":
                        seen.append((topic, msg.seq))
                        frames += [msg] if topic == "camera" else []
                        continue
                    while frames and (
                        msg.final or frames[0].capture_ns + 80 * MS <= msg.sent_until_ns
                    ):
                        seq = frames.pop(0).seq
                        pub.send(
                            Detections(
                                objects=np.zeros(0, DETECTION_DTYPE), source_seqs={"camera": seq}
                            )
                        )
        finally:
            for sub in subs.values():
                sub.close()


@pytest.mark.slow
def test_lockstep_over_sockets_gives_the_same_inputs_every_run(recording) -> None:
    path, messages = recording
    runs = []
    for _ in range(2):
        stop, seen = threading.Event(), []
        thread = threading.Thread(target=consumer, args=(stop, seen))
        thread.start()
        try:
            rc = fusion_main(
                [
                    "play",
                    str(path),
                    "--lockstep",
                    "--topics",
                    "camera,radar",
                    "--no-progress",
                    "--wait-subscribers-s",
                    "5",
                    "--lockstep-timeout-s",
                    "5",
                ]
            )
        finally:
            stop.set()
            thread.join()
        assert rc == 0
        runs.append(seen)
    assert runs[0] == runs[1]
    assert runs[0] == [(t, m.seq) for t, m, _ in messages if t in ("camera", "radar")]


def test_replay_into_recorder_records_the_same_buffers(recording, tmp_path) -> None:
    path, messages = recording
    topics = ["camera", "radar", "ego_motion"]
    with RecordingWriter(tmp_path / "again.mcap") as writer:
        recorder = Recorder.for_topics(writer, topics)
        pubs = {t: Publisher(t) for t in topics}
        try:
            for pub in pubs.values():
                assert pub.wait_for_subscribers(1, timeout_s=5)
            with RecordingReader(path) as reader:
                player = Player(reader, pubs, max_speed=True, topics=topics)
                thread = threading.Thread(target=player.run)
                thread.start()
                while thread.is_alive():
                    recorder.poll(10)
                thread.join()
                while recorder.poll(200):
                    pass
            assert all(c["lost"] == 0 and c["rejected"] == 0 for c in recorder.counters().values())
        finally:
            recorder.close()
            for pub in pubs.values():
                pub.close()
    with RecordingReader(tmp_path / "again.mcap") as reader:
        got = {t: [r for r in reader.messages() if r.topic == t] for t in topics}
    for topic in topics:
        originals = [m for t, m, _ in messages if t == topic]
        assert [r.sequence for r in got[topic]] == [m.seq for m in originals]
        for rec, msg in zip(got[topic], originals, strict=True):
            assert [bytes(f) for f in rec.frames[2:]] == [
                bytes(f) for f in codec.encode(topic, msg)[2:]
            ]
            assert rec.decode().trace["recorded_capture_ns"] == msg.capture_ns


def start_recorder(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodes.recorder",
            "-o",
            str(out),
            "--topics",
            "camera,radar",
            "--stats-period-s",
            "0",
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def publish_at_nominal_rates(seconds: float) -> list[tuple[str, Message]]:
    """Publish camera at 20 Hz and radar at 13 Hz for `seconds`; what was sent, in order."""
    rng = np.random.default_rng(3)
    sent = []
    with Publisher("camera") as cam_pub, Publisher("radar") as radar_pub:
        assert cam_pub.wait_for_subscribers(1, timeout_s=20)
        assert radar_pub.wait_for_subscribers(1, timeout_s=20)
        t0 = time.monotonic_ns()
        events = sorted(
            [(int(i * 50 * MS), "camera", i) for i in range(int(seconds * 20))]
            + [(int(i * 1e9 / 13), "radar", i) for i in range(int(seconds * 13))]
        )
        for offset_ns, topic, seq in events:
            time.sleep(max(0.0, (t0 + offset_ns - time.monotonic_ns()) / 1e9))
            msg = camera(rng, seq, time.monotonic_ns()) if topic == "camera" else radar(rng, seq, 0)
            (cam_pub if topic == "camera" else radar_pub).send(msg)
            sent.append((topic, msg))
        time.sleep(0.3)  # let the last messages reach the recorder
    return sent


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_recorder_records_everything_and_finishes_on_signal(tmp_path, sig) -> None:
    out = tmp_path / "rec.mcap"
    proc = start_recorder(out)
    try:
        sent = publish_at_nominal_rates(1.5)
    finally:
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
    with RecordingReader(out) as reader:
        assert reader.indexed and reader.damage is None
        got = list(reader.messages())
    for topic in ("camera", "radar"):
        want = [m for t, m in sent if t == topic]
        have = [r for r in got if r.topic == topic]
        assert len(have) == len(want)  # nothing lost at nominal rates
        for rec, msg in zip(have, want, strict=True):
            assert [bytes(f) for f in rec.frames[2:]] == [
                bytes(f) for f in codec.encode(topic, msg)[2:]
            ]
            assert (
                rec.publish_time_ns == msg.capture_ns and rec.log_time_ns >= msg.trace["published"]
            )


@pytest.mark.slow
def test_sigkill_leaves_recoverable_chunks(tmp_path) -> None:
    out = tmp_path / "killed.mcap"
    proc = start_recorder(out, "--chunk-size", "4096", "--flush-s", "1000")
    try:
        sent = publish_at_nominal_rates(1.0)
    finally:
        proc.kill()
        proc.wait(timeout=20)
    with RecordingReader(out) as reader:
        assert not reader.indexed and reader.damage is not None
    assert fusion_main(["recover", str(out), str(tmp_path / "fixed.mcap")]) == 0
    with RecordingReader(tmp_path / "fixed.mcap") as reader:
        assert reader.indexed and reader.damage is None
        got = list(reader.messages())
    # Every message of every finished chunk survives; only the chunk in progress (< 4 KiB:
    # a camera frame and a few scans) is lost.
    assert len(sent) - 6 <= len(got) <= len(sent)
    for topic in ("camera", "radar"):
        have = [r for r in got if r.topic == topic]
        want = [m for t, m in sent if t == topic][: len(have)]
        assert [r.sequence for r in have] == [m.seq for m in want]
        for rec, msg in zip(have, want, strict=True):
            assert [bytes(f) for f in rec.frames[2:]] == [
                bytes(f) for f in codec.encode(topic, msg)[2:]
            ]


def test_player_plays_every_complete_chunk_of_a_damaged_file(recording, tmp_path, capsys) -> None:
    path, messages = recording
    data = path.read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) // 2])
    out = Log()
    with RecordingReader(tmp_path / "cut.mcap") as reader:
        stats = Player(reader, out.publishers, max_speed=True).run()
    assert "damaged at byte offset" in stats.damage and str(tmp_path / "cut.mcap") in stats.damage
    assert 0 < stats.published < len(messages)
    played = [(t, m.seq) for t, m, _ in messages[: stats.published]]
    assert [(t, m.seq) for t, m in out.sent] == played
    assert fusion_main(["info", str(tmp_path / "cut.mcap")]) == 2
    captured = capsys.readouterr()
    assert "DAMAGED" in captured.out and "damaged at byte offset" in captured.err


def test_in_process_replay_yields_restamped_messages(recording) -> None:
    path, messages = recording
    with RecordingReader(path) as reader:
        player = Player(reader, max_speed=True, topics=["camera", "radar"])
        got = list(player.replay())
        with pytest.raises(ConfigError, match="no publisher"):
            player.run()
    expected = [(t, m) for t, m, _ in messages if t in ("camera", "radar")]
    assert [(t, m.seq) for t, m in got] == [(t, m.seq) for t, m in expected]
    assert all(
        m.trace == {"recorded_capture_ns": o.capture_ns}
        for (_, m), (_, o) in zip(got, expected, strict=True)
    )
    assert [m.capture_ns for _, m in got] == sorted(m.capture_ns for _, m in got)
    assert player.stats.published == len(expected)


def test_lockstep_without_a_consumer_fails_clearly_after_waiting(recording, capsys) -> None:
    path, _ = recording
    rc = fusion_main(["play", str(path), "--lockstep", "--wait-subscribers-s", "0.3"])
    err = capsys.readouterr().err
    assert rc == 2 and "no consumer after 0.3 s" in err and "--lockstep" in err, err
