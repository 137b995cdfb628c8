"""``fusion eval --replay REC.mcap``: accuracy of the pipeline users run, not of a script.

The recording is replayed in lock-step through the live process graph (the player, the fusion
node with the weights and ``--mode`` asked for, a recorder of its Detections), exactly as
``fusion play --lockstep`` would; then every frame that has ground truth in the recording is
scored from the recorded Detections with the protocol of `fusion.learn.evaluate.score`. The
offline evaluation and this one use the same sync, preprocessing and model, so they must agree
(docs/model.md keeps both figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fusion.errors import FusionError
from fusion.learn.baselines import filter_detections_for_eval, filter_gt_for_eval
from fusion.learn.evaluate import MAX_RANGE_M
from fusion.learn.metrics import EvalResult, evaluate_detections
from fusion.logs.player import recorded_topics
from fusion.logs.reader import RecordingReader
from fusion.perception.geometry import CameraModel
from fusion.runtime.graph import GraphSpec, replay_graph
from fusion.runtime.launch import run_graph
from fusion.wire.messages import (
    Calibration,
    CameraFrame,
    Detections,
    GroundTruth,
    empty_detections,
)

PLAYED_TOPICS = ("camera", "radar", "calibration", "ego_motion")


def eval_graph(
    recording: Path,
    weights: Path,
    out: Path,
    mode: str,
    device: str,
    threads: int,
    topics: tuple[str, ...] = PLAYED_TOPICS,
) -> GraphSpec:
    """Player (lock-step) of `topics` -> fusion node (lock-step, `mode`) -> recorder of the
    Detections. The graph's sockets live in `out`/ipc, so nothing else on the host (a live graph,
    another evaluation) shares its topics."""
    fusion_args = ["--weights", str(weights), "--mode", mode]
    fusion_args += ["--device", device, "--threads", str(threads)]
    return replay_graph(
        "eval-replay",
        recording,
        out,
        fusion_args,
        topics=topics,
        lockstep=True,
        ipc_dir=str(out / "ipc"),
    )


def score_replay(
    recording: Path, detections_path: Path, classes: tuple[str, ...]
) -> tuple[EvalResult, dict[str, int]]:
    """Score the recorded Detections of a replay against the recording's ground truth; also
    returns counts (frames with ground truth, answered, modes)."""
    answers: dict[int, Detections] = {}
    for record in RecordingReader(detections_path).messages(topics=["detections"]):
        out = record.decode()
        seq = out.source_seqs.get("camera")
        if isinstance(out, Detections) and seq is not None:
            answers[seq] = out
    return score_answers(recording, answers, classes)


def score_answers(
    recording: Path,
    answers: Mapping[int, Detections],
    classes: tuple[str, ...],
    end_s: float | None = None,
) -> tuple[EvalResult, dict[str, int]]:
    """Score a replay's answers (camera seq -> its Detections) against the recording's ground
    truth, for the frames logged in its first `end_s` seconds (all when None, as the player's
    ``end_s``); a frame with ground truth and no answer counts as detecting nothing. Also
    returns counts (frames with ground truth, answered, modes)."""
    camera: CameraModel | None = None
    capture_of: dict[int, int] = {}
    truths: dict[int, np.ndarray] = {}
    cameras: dict[int, CameraModel] = {}
    reader = RecordingReader(recording)
    end_ns = None if end_s is None else reader.start_ns + int(end_s * 1e9)
    for record in reader.messages(topics=["calibration", "camera", "ground_truth"], end_ns=end_ns):
        msg = record.decode()
        if isinstance(msg, Calibration) and msg.width_px > 0:
            camera = CameraModel.from_calibration(msg)
        elif isinstance(msg, CameraFrame):
            capture_of[msg.seq] = msg.capture_ns
            if camera is not None:
                cameras[msg.capture_ns] = camera
        elif isinstance(msg, GroundTruth):
            truths[msg.capture_ns] = msg.boxes
    pairs, counts = [], {"frames_with_truth": 0, "answered": 0}
    for seq, capture_ns in sorted(capture_of.items()):
        if capture_ns not in truths or capture_ns not in cameras:
            continue
        counts["frames_with_truth"] += 1
        out = answers.get(seq)
        objects = empty_detections()  # a frame not answered (or invalid) detected nothing
        if out is not None:
            counts["answered"] += 1
            counts[f"mode_{out.mode}"] = counts.get(f"mode_{out.mode}", 0) + 1
            if out.valid:
                objects = out.objects
        cam = cameras[capture_ns]
        pairs.append(
            (
                filter_detections_for_eval(objects, cam, MAX_RANGE_M),
                filter_gt_for_eval(truths[capture_ns], cam, MAX_RANGE_M),
            )
        )
    return evaluate_detections(pairs, classes, max_range_m=MAX_RANGE_M), counts


def run_replay_eval(args: argparse.Namespace, weights: Path) -> int:
    from fusion.model.weights import load_weights

    cfg = load_weights(weights)[0].cfg
    modes = ("fused", "camera_only", "radar_only") if args.ablation else (args.mode,)
    topics = recorded_topics(str(args.replay), PLAYED_TOPICS)  # ego motion is optional
    if "camera" not in topics:
        print(f"fusion eval: {args.replay} has no camera topic to replay", file=sys.stderr)
        return 1
    report: dict = {"weights": str(weights), "recording": str(args.replay), "results": {}}
    with tempfile.TemporaryDirectory(prefix="fusion-eval-") as tmp:
        for mode in modes:
            out = Path(tmp) / mode
            out.mkdir()
            started = time.monotonic()
            node_mode = "auto" if mode == "fused" else mode
            graph = eval_graph(
                args.replay, weights, out, node_mode, args.device, args.threads, topics
            )
            launcher = run_graph(
                graph, log_dir=out / "logs", status=False, monitor_topics=[], finish_grace_s=2.0
            )
            if launcher.interrupted:
                print("fusion eval: interrupted", file=sys.stderr)
                return 130
            player = launcher.nodes["player"]
            if player.last_exit != 0:
                log_tail = (out / "logs" / "player.log").read_text(errors="replace")[-2000:]
                print(
                    f"fusion eval: the player failed (exit {player.last_exit}):\n{log_tail}",
                    file=sys.stderr,
                )
                return 1
            try:
                result, counts = score_replay(args.replay, out / "detections.mcap", cfg.class_names)
            except FusionError as exc:
                print(f"fusion eval: the replay recorded nothing ({exc})", file=sys.stderr)
                return 1
            seconds = time.monotonic() - started
            print(
                f"\n== {mode}, live lock-step replay ({seconds:.0f} s): {counts}\n{result.table()}"
            )
            report["results"][mode] = result.to_dict() | {"counts": counts, "seconds": seconds}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0
