"""Fault injection: the stream transformation on its own, then a real fusion node under faults."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fusion.errors import ConfigError
from fusion.logs.faults import (
    FaultInjector,
    FaultSpec,
    parse_specs,
    parse_time_ns,
    sleep_until_monotonic,
)
from fusion.runtime.transport import Publisher, Subscriber
from fusion.wire.messages import CameraFrame, Detections, Message, RadarScan, empty_points
from tests import nodeproc as npc

MS = 1_000_000
T0 = 1_000_000 * MS


def stream(seconds: float = 2.0) -> list[tuple[str, Message]]:
    """A camera at 20 Hz and a radar at 10 Hz, capture stamps starting at T0."""
    out: list[tuple[str, Message]] = []
    for i in range(int(seconds * 20)):
        t = T0 + i * 50 * MS
        image = np.full((4, 4, 3), i, np.uint8)
        out.append(("camera", CameraFrame(image=image, seq=i, capture_ns=t)))
        if i % 2 == 0:
            out.append(
                ("radar", RadarScan(points=empty_points(0), seq=i // 2, capture_ns=t + 10 * MS))
            )
    return out


def run(specs: list[str], items: list[tuple[str, Message]] | None = None):
    injector = FaultInjector(specs)
    return injector, list(injector.apply(items if items is not None else stream()))


@pytest.mark.parametrize(
    "text, ns",
    [
        ("80ms", 80 * MS),
        ("2s", 2_000 * MS),
        ("+500ms", 500 * MS),
        ("-1.5s", -1_500 * MS),
        ("250us", 250_000),
        ("7ns", 7),
    ],
)
def test_parse_time(text: str, ns: int) -> None:
    assert parse_time_ns(text) == ns


def test_parse_specs() -> None:
    assert FaultSpec.parse("drop:radar:2s@3s") == FaultSpec(
        "drop", "radar", 2_000 * MS, 3_000 * MS, "drop:radar:2s@3s"
    )
    assert FaultSpec.parse("reorder:radar").kind == "reorder"
    assert FaultSpec.parse("clock-jump:camera:-500ms").amount_ns == -500 * MS
    assert parse_specs([]) is None


@pytest.mark.parametrize(
    "text, match",
    [
        ("explode:radar:1s", "unknown fault"),
        ("drop:radar", "bad fault"),
        ("reorder:radar:1s", "bad fault"),
        ("drop:lidar:1s", "unknown topic"),
        ("drop:radar:soon", "not a time"),
        ("delay:camera:-80ms", "positive"),
        ("clock-jump:camera:0ms", "non-zero"),
        ("drop:radar:1s@-2s", "not a time|negative"),
    ],
)
def test_bad_specs_are_config_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FaultSpec.parse(text)


def test_drop_window_removes_exactly_its_messages() -> None:
    injector, out = run(["drop:radar:500ms@1s"])
    dropped = [
        m.seq
        for t, m in stream()
        if t == "radar" and T0 + 1000 * MS <= m.capture_ns < T0 + 1500 * MS
    ]
    assert injector.counts["drop:radar:500ms@1s"] == len(dropped) == 5
    assert not {m.seq for t, m in out if t == "radar"} & set(dropped)
    assert sum(t == "camera" for t, _ in out) == 40


def test_delay_keeps_stamps_and_sends_later() -> None:
    injector, out = run(["delay:camera:80ms"])
    assert injector.counts["delay:camera:80ms"] == 40
    position = {(t, m.seq): i for i, (t, m) in enumerate(out)}
    for t, m in out:
        if t == "camera":
            assert m.capture_ns == T0 + m.seq * 50 * MS  # stamps untouched
    # camera 0 (due at 0) is sent after radar 0 (10 ms) but before camera 2 is due (100 ms)...
    assert position[("radar", 0)] < position[("camera", 0)] < position[("camera", 2)]
    # ...and after every message due before 80 ms
    assert position[("camera", 1)] > position[("camera", 0)]
    assert len(out) == len(stream())


def test_delay_waits_for_the_last_held_messages() -> None:
    waited: list[int] = []
    injector = FaultInjector(["delay:camera:80ms"], wait_until=waited.append)
    out = list(injector.apply(stream(0.1)))  # camera 0 and 1, radar 0
    assert [m.seq for t, m in out if t == "camera"] == [0, 1]
    assert waited == [T0 + 80 * MS, T0 + 130 * MS]


def test_reorder_swaps_pairs() -> None:
    injector, out = run(["reorder:radar"])
    assert [m.seq for t, m in out if t == "radar"][:6] == [1, 0, 3, 2, 5, 4]
    assert injector.counts["reorder:radar"] == 20


def test_duplicate_sends_twice() -> None:
    injector, out = run(["duplicate:camera@1s"])
    seqs = Counter(m.seq for t, m in out if t == "camera")
    assert injector.counts["duplicate:camera@1s"] == 20
    assert all(seqs[s] == (2 if s >= 20 else 1) for s in range(40))


def test_freeze_repeats_content_with_advancing_stamps() -> None:
    injector, out = run(["freeze:camera:500ms@1s"])
    frames = {m.seq: m for t, m in out if t == "camera"}
    assert injector.counts["freeze:camera:500ms@1s"] == 10
    for seq in range(20, 30):
        assert frames[seq].image[0, 0, 0] == 19  # the last frame before the window
        assert frames[seq].capture_ns == T0 + seq * 50 * MS
    assert frames[30].image[0, 0, 0] == 30


def test_clock_jump_shifts_capture_stamps() -> None:
    injector, out = run(["clock-jump:camera:+500ms@1s"])
    for t, m in out:
        if t == "camera":
            assert m.capture_ns == T0 + m.seq * 50 * MS + (500 * MS if m.seq >= 20 else 0)
    assert injector.counts["clock-jump:camera:+500ms@1s"] == 20


def test_faults_compose_in_order() -> None:
    injector, out = run(["drop:radar:1s", "duplicate:radar"])
    assert injector.counts["drop:radar:1s"] == 10
    assert injector.counts["duplicate:radar"] == 10
    assert sum(t == "radar" for t, _ in out) == 20
    assert "drop:radar:1s 10" in injector.summary()


@pytest.mark.parametrize(
    "spec, lost, restarts",
    [("drop:radar:1s@500ms", 10, 0), ("reorder:radar@100ms", 0, 9), ("duplicate:radar", 0, 20)],
)
def test_subscriber_counters_match_the_injected_faults(spec: str, lost: int, restarts: int) -> None:
    """Over a real socket: drops show as ``lost``, late or repeated seqs as ``restarts``."""
    items = [(t, m) for t, m in stream() if t == "radar"]
    with Publisher("radar") as pub, Subscriber("radar") as sub:
        assert pub.wait_for_subscribers(1, 5)
        injector = FaultInjector([spec])
        for _, msg in injector.apply(items):
            pub.send(msg)
        got = []
        while (msg := sub.recv(200)) is not None:
            got.append(msg.seq)
    assert sub.stats.lost == lost and sub.stats.restarts == restarts, sub.stats
    assert sub.stats.delivered == len(items) - lost + (restarts if spec[0] == "d" else 0)
    assert sorted(set(got)) == sorted({m.seq for _, m in items} - set(range(5, 5 + lost)))


# -- a real fusion node under faults ------------------------------------------------------

CAMERA_PERIOD_NS = 50 * MS
RADAR_PERIOD_NS = 77 * MS  # 13 Hz


def live_stream(seconds: float, t0_ns: int) -> list[tuple[str, Message]]:
    """Camera at 20 Hz and radar at 13 Hz for `seconds`, stamped from `t0_ns`."""
    items: list[tuple[int, str, Message]] = []
    for i in range(int(seconds * 1e9 / CAMERA_PERIOD_NS)):
        t = t0_ns + i * CAMERA_PERIOD_NS
        items.append((t, "camera", npc.camera_frame(i, t)))
    for i in range(int(seconds * 1e9 / RADAR_PERIOD_NS)):
        t = t0_ns + i * RADAR_PERIOD_NS
        items.append((t, "radar", npc.radar_scan(i, t)))
    items.sort(key=lambda x: x[0])
    return [(topic, msg) for _, topic, msg in items]


def real_time(items: list[tuple[str, Message]]):
    """Yield each item when its capture time comes, as the player's replay does."""
    for topic, msg in items:
        wait_s = (msg.capture_ns - time.monotonic_ns()) / 1e9
        if wait_s > 0:
            time.sleep(wait_s)
        yield topic, msg


def feed(specs: list[str], seconds: float, tmp_path: Path, budget_ms: float = 1000.0):
    """Start a fusion node, play a live stream through `specs` in real time, collect outputs."""
    weights = npc.tiny_weights(tmp_path / "tiny.safetensors")
    # Deep send queues: a node stalled by other work on the machine delays what we send, and
    # ZeroMQ drops nothing on our side, so what arrives is exactly what the faults made.
    pubs = {
        t: Publisher(t, sndhwm=10_000) for t in ("calibration", "ego_motion", "radar", "camera")
    }
    detections = Subscriber("detections", latest_only=False, queue_size=10_000)
    log_path = tmp_path / "fusion.log"
    proc = npc.start(
        "nodes.fusion_node",
        [
            *npc.fusion_node_args(weights, budget_ms=str(budget_ms)),
            "--sync-deadline-ms",  # pairing must not depend on how busy the machine is
            "100",
            "--stats-period-s",
            "0",
        ],
        log_path,
    )
    outputs: list[Detections] = []
    try:
        for pub in pubs.values():
            assert pub.wait_for_subscribers(1, npc.START_TIMEOUT_S), log_path.read_text()
        pubs["calibration"].send(npc.calibration())
        time.sleep(0.2)
        t0_ns = time.monotonic_ns() + 100 * MS
        items = live_stream(seconds, t0_ns)
        injector = FaultInjector(specs, wait_until=sleep_until_monotonic)
        for topic, msg in injector.apply(real_time(items)):
            pubs[topic].send(msg)
            while (d := detections.recv(0)) is not None:
                outputs.append(d)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            if (d := detections.recv(100)) is not None:
                outputs.append(d)
    finally:
        text = npc.stop(proc, log_path)
        for pub in pubs.values():
            pub.close()
        detections.close()
    return injector, items, outputs, npc.input_counters(text), t0_ns, text


def assert_budget_marked(outputs: list[Detections], budget_ms: float) -> None:
    for d in outputs:
        late = d.trace["decoded"] - d.capture_ns > budget_ms * MS
        assert d.budget_miss == late, d.trace


@pytest.mark.slow
def test_radar_dropout_gives_camera_only_then_fused(tmp_path: Path) -> None:
    spec = "drop:radar:2s@1500ms"
    injector, items, outputs, counters, t0_ns, _ = feed([spec], 5.0, tmp_path)
    in_gap = [m for t, m in items if t == "radar" and 1500 * MS <= m.capture_ns - t0_ns < 3500 * MS]
    assert injector.counts[spec] == len(in_gap) > 20
    radar_sent = sum(t == "radar" for t, _ in items) - len(in_gap)
    assert counters["radar"]["delivered"] == radar_sent
    assert counters["radar"]["lost"] == len(in_gap)  # the gap shows as lost seqs, as it should

    def rel_ms(d: Detections) -> float:
        return (d.capture_ns - t0_ns) / MS

    # Frames well inside the gap (its radar's slop and the radar timeout past) are camera-only...
    gap = [d for d in outputs if 1700 <= rel_ms(d) < 3400]
    assert gap and all(d.mode == "camera_only" and d.valid for d in gap), [d.mode for d in gap]
    # ...and fusion resumes once radar is back.
    after = [d for d in outputs if rel_ms(d) >= 3800]
    assert after and sum(d.mode == "fused" for d in after) >= 0.7 * len(after), after
    before = [d for d in outputs if 200 <= rel_ms(d) < 1400]
    assert before and sum(d.mode == "fused" for d in before) >= 0.7 * len(before), before
    assert_budget_marked(outputs, 1000.0)


@pytest.mark.slow
def test_duplicates_and_reordering_are_counted(tmp_path: Path) -> None:
    specs = ["duplicate:camera", "reorder:radar@200ms"]
    injector, items, outputs, counters, _, _ = feed(specs, 3.0, tmp_path)
    pairs = injector.counts["reorder:radar@200ms"] // 2
    assert injector.counts["duplicate:camera"] == sum(t == "camera" for t, _ in items)
    # The transport counts a repeated or older seq in ``restarts``: one per duplicate, one per
    # swapped pair; the swapped message arrives late, so it is not counted lost.
    assert counters["camera"]["restarts"] == injector.counts["duplicate:camera"]
    assert counters["radar"]["restarts"] == pairs
    assert counters["radar"]["lost"] == 0
    assert counters["radar"]["delivered"] == sum(t == "radar" for t, _ in items)
    assert outputs and all(d.valid for d in outputs)
    answered = Counter(d.source_seqs["camera"] for d in outputs if "camera" in d.source_seqs)
    assert max(answered.values()) == 1, "a duplicated frame was answered twice"
    assert_budget_marked(outputs, 1000.0)


@pytest.mark.slow
def test_delay_beyond_budget_drops_and_counts_instead_of_publishing_late(tmp_path: Path) -> None:
    budget_ms = 60.0
    injector, items, outputs, counters, _, log_text = feed(
        ["delay:camera:150ms"], 3.0, tmp_path, budget_ms=budget_ms
    )
    assert injector.counts["delay:camera:150ms"] == sum(t == "camera" for t, _ in items)
    assert all(d.mode == "radar_only" or d.budget_miss for d in outputs), [
        (d.mode, d.source_seqs, (d.trace["decoded"] - d.capture_ns) / MS) for d in outputs
    ]
    camera_answers = [d for d in outputs if "camera" in d.source_seqs]
    assert not camera_answers, [(d.mode, d.trace) for d in camera_answers[:3]]
    dropped = npc.pipeline_counters(log_text)
    assert dropped.get("stale", 0) >= counters["camera"]["delivered"] - 2, dropped


@pytest.mark.slow
def test_clock_jump_breaks_pairing_and_outputs_say_camera_only(tmp_path: Path) -> None:
    spec = "clock-jump:camera:+500ms@1s"
    injector, items, outputs, _, t0_ns, _ = feed([spec], 3.0, tmp_path)
    assert injector.counts[spec] == sum(
        t == "camera" and m.capture_ns - t0_ns >= 1000 * MS for t, m in items
    )
    jumped = [d for d in outputs if d.capture_ns - t0_ns >= 1500 * MS]
    assert jumped and all(d.mode == "camera_only" for d in jumped), [d.mode for d in jumped]
    before = [d for d in outputs if 200 * MS <= d.capture_ns - t0_ns < 900 * MS]
    assert before and sum(d.mode == "fused" for d in before) >= 0.7 * len(before), before


# -- the player's --inject ----------------------------------------------------------------


def write_recording(path: Path, seconds: float = 2.0) -> list[tuple[str, Message]]:
    """A drive of `stream()` messages, logged at their capture times."""
    from fusion.logs.writer import RecordingWriter

    items = stream(seconds)
    with RecordingWriter(path) as writer:
        for topic, msg in items:
            writer.write(topic, msg, log_time_ns=msg.capture_ns)
    return items


def test_player_applies_injected_faults(tmp_path: Path) -> None:
    from fusion.logs.player import Player
    from fusion.logs.reader import RecordingReader
    from fusion.runtime.testing import FakePublisher

    items = write_recording(tmp_path / "d.mcap")
    pubs = {t: FakePublisher(t) for t in ("camera", "radar")}
    faults = FaultInjector(["drop:radar:1s@500ms", "duplicate:camera@1s"])
    with RecordingReader(tmp_path / "d.mcap") as reader:
        Player(reader, pubs, max_speed=True, faults=faults).run()
    radar_sent = [m.seq for m in pubs["radar"].sent]
    assert radar_sent == [m.seq for t, m in items if t == "radar" and not 5 <= m.seq < 15]
    assert len(pubs["camera"].sent) == 40 + 20
    assert faults.counts == {"drop:radar:1s@500ms": 10, "duplicate:camera@1s": 20}


def test_play_command_injects_and_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from fusion.cli import main as fusion_main

    write_recording(tmp_path / "d.mcap", 1.0)
    with Subscriber("radar") as sub, caplog.at_level(logging.INFO):
        code = fusion_main(
            [
                "play",
                str(tmp_path / "d.mcap"),
                "--max-speed",
                "--no-progress",
                "--wait-subscribers-s",
                "2",
                "--inject",
                "drop:radar:500ms",
            ]
        )
        got = []
        while (msg := sub.recv(200)) is not None:
            got.append(msg.seq)
    assert code == 0
    assert got == list(range(5, 10))
    assert "injected faults (messages touched): drop:radar:500ms 5" in caplog.text
    assert fusion_main(["play", str(tmp_path / "d.mcap"), "--inject", "drop:lidar:1s"]) == 2
