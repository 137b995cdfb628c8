"""`fusion eval --replay`: the accuracy of the pipeline users run. A recording with ground truth
is replayed through the live graph in lock-step (player, fusion node, recorder) and scored, and
the score equals the offline evaluation of the same frames."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusion.cli import main
from fusion.learn.data import recording_frames
from fusion.learn.evaluate import predict, score
from fusion.learn.features import compute_features
from fusion.logs.reader import RecordingReader
from fusion.logs.writer import RecordingWriter
from fusion.model import DEFAULT_WEIGHTS, load_weights

REPO = Path(__file__).resolve().parents[1]


def first_seconds(source: Path, out: Path, seconds: float) -> Path:
    with RecordingReader(source) as reader, RecordingWriter(out) as writer:
        end_ns = reader.start_ns + int(seconds * 1e9)
        for record in reader.messages(end_ns=end_ns):
            writer.write(record.topic, record.decode(), log_time_ns=record.log_time_ns)
    return out


@pytest.mark.slow
def test_live_replay_scores_what_the_offline_evaluation_scores(tmp_path) -> None:
    recording = first_seconds(REPO / "recordings" / "highway.mcap", tmp_path / "hw.mcap", 3.0)
    report_path = tmp_path / "replay.json"
    args = ["eval", "--weights", str(DEFAULT_WEIGHTS), "--replay", str(recording)]
    assert main([*args, "--device", "cpu", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())["results"]["fused"]
    assert report["counts"]["answered"] == report["counts"]["frames_with_truth"] > 40

    model, _ = load_weights(DEFAULT_WEIGHTS)
    size = (model.cfg.input_w, model.cfg.input_h)
    features = compute_features(recording_frames(recording, size), model.cfg, "offline")
    offline = score(features.frames, predict(model, features)[0], model.cfg.class_names)
    assert report["n_frames"] == len(features) == report["counts"]["frames_with_truth"]
    assert abs(report["mean_ap"] - offline.mean_ap) <= 0.01, (report["mean_ap"], offline.mean_ap)


def without_topic(source: Path, out: Path, seconds: float, dropped: str) -> Path:
    with RecordingReader(source) as reader, RecordingWriter(out) as writer:
        end_ns = reader.start_ns + int(seconds * 1e9)
        for record in reader.messages(end_ns=end_ns):
            if record.topic != dropped:
                writer.write(record.topic, record.decode(), log_time_ns=record.log_time_ns)
    return out


@pytest.mark.slow
def test_a_recording_without_ego_motion_is_replayed_with_what_it_has(tmp_path) -> None:
    """Real-data recordings (the Astyx import) carry no ego motion: the replay plays the
    topics the recording has."""
    recording = without_topic(
        REPO / "recordings" / "city.mcap", tmp_path / "no_ego.mcap", 1.0, "ego_motion"
    )
    report_path = tmp_path / "replay.json"
    args = ["eval", "--weights", str(DEFAULT_WEIGHTS), "--replay", str(recording)]
    assert main([*args, "--device", "cpu", "--json", str(report_path)]) == 0
    counts = json.loads(report_path.read_text())["results"]["fused"]["counts"]
    assert counts["answered"] == counts["frames_with_truth"] > 10


def test_a_recording_without_camera_is_refused(tmp_path, capsys) -> None:
    recording = without_topic(
        REPO / "recordings" / "city.mcap", tmp_path / "no_camera.mcap", 0.5, "camera"
    )
    args = ["eval", "--weights", str(DEFAULT_WEIGHTS), "--replay", str(recording)]
    assert main(args) == 1
    assert "no camera topic" in capsys.readouterr().err
