"""The data sets training and evaluation share: labelled frames made by the fusion node's code.

Every source is a recording or a time-ordered stream of ``(topic, message)`` pairs held in
memory (`fusion.logs.memory.MessageLog`), and `labelled_frames` replays it as ``fusion play
--lockstep`` does into the fusion node's own pipeline in lock-step: the same sync (each camera
frame paired with the nearest radar scan within the slop, whatever the order of messages with
equal times), the same motion compensation, the same radar calibration, the same image decode.
A frame keeps the ground truth stamped with its capture time. Validation is always a different
sequence than training.

- Astyx (`astyx_frames`): the importer's messages for chosen frame indices; `astyx_split` splits
  whole runs (test: the last runs holding 20 % of the frames, 356-445; val: the runs before them
  holding 15 %, 288-355; train: the rest), `astyx_folds` cuts all runs into k folds for
  cross-validation.
- Recordings (`recording_frames`): any MCAP recording with ground truth.
- Simulated drives (`sim_frames`): `fusion.sim.simulate` in memory, every n-th frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion.datasets.astyx import default_root, read_frame, sequence_ids
from fusion.logs.memory import MessageLog
from fusion.logs.player import Player
from fusion.logs.reader import RecordingReader
from fusion.perception.frame import FrameInputs
from fusion.perception.geometry import CameraModel
from fusion.perception.pipeline import FusionPipeline, PipelineConfig
from fusion.sim import simulate
from fusion.wire.messages import GroundTruth, Message, empty_detections

ASTYX_TEST_FRACTION = 0.2
ASTYX_VAL_FRACTION = 0.15
SIM_SCENARIOS = ("city", "highway", "night")
#: The health key by which a captured frame is found again in the pipeline's output.
CAPTURED = "captured_frame"


@dataclass
class LabelledFrame:
    """One frame as the model is given it, with its ground truth."""

    inputs: FrameInputs
    boxes: np.ndarray  # (M,) GT_BOX_DTYPE, reference frame
    sequence: str  # the drive or run it comes from (splits never cut one)
    key: str  # unique name of the frame


class _Capture:
    """A `DetectorLike` that keeps each frame's assembled inputs instead of running a model."""

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.cfg = _InputSize(*input_size)
        self.frames: dict[int, tuple[FrameInputs, str]] = {}
        self._count = 0

    def preprocess(self, image_bgr: np.ndarray, radar_points: np.ndarray, camera: CameraModel):
        return FrameInputs(image_bgr, radar_points, camera)

    def infer(self, prepared: FrameInputs, mode: str = "fused") -> int:
        self._count += 1
        self.frames[self._count] = (prepared, mode)
        return self._count

    def decode(self, prepared: FrameInputs, raw: int) -> tuple[np.ndarray, dict[str, float]]:
        return empty_detections(), {CAPTURED: float(raw)}  # names the frame in the output


@dataclass
class _InputSize:
    input_w: int
    input_h: int


def labelled_frames(
    log: MessageLog | RecordingReader,
    input_size: tuple[int, int],
    sequence: str,
    frame_step: int = 1,
    fused_only: bool = True,
) -> Iterator[LabelledFrame]:
    """Every `frame_step`-th frame the fusion node would run the model on when `log` (a
    recording, or messages held in memory) is replayed in lock-step (`Player.lockstep_stream`
    into a lock-step `FusionPipeline`, exactly as ``fusion play --lockstep`` into
    ``nodes.fusion_node --lockstep``), with the ground truth stamped at its capture time.
    Frames without ground truth are skipped, and with `fused_only` frames the node would not
    fuse (training makes its own camera- and radar-only samples).
    `input_size` (width, height) is the model's: it decides how small a JPEG may be decoded."""
    player = Player.in_process(log)
    capture = _Capture(input_size)
    pipeline = FusionPipeline(capture, PipelineConfig(lockstep=True), clock_ns=lambda: 0)
    truths: dict[int, np.ndarray] = {}
    k = 0
    for topic, msg in player.lockstep_stream():
        if isinstance(msg, GroundTruth):
            truths[msg.capture_ns] = msg.boxes
            continue
        for out in pipeline.feed(topic, msg):
            if CAPTURED not in out.health:
                continue  # an answer to a frame the model never saw
            inputs, mode = capture.frames.pop(int(out.health[CAPTURED]))
            if not out.valid:
                continue
            boxes = truths.pop(out.capture_ns, None)
            k += 1
            if (k - 1) % frame_step or boxes is None or (fused_only and mode != "fused"):
                continue
            key = f"{sequence}/{out.source_seqs['camera']}"
            yield LabelledFrame(inputs, boxes, sequence, key)


def astyx_messages(root: Path | str, indices: Sequence[int]) -> Iterator[tuple[str, Message]]:
    """The importer's messages of Astyx frames `indices`, in log order (as `fusion import
    astyx` writes them)."""
    for index in indices:
        frame = read_frame(root, index)
        for calib in frame.calibrations:
            yield "calibration", calib
        yield "camera", frame.camera
        yield "radar", frame.radar
        yield "ground_truth", frame.ground_truth


def astyx_frames(
    root: Path | str | None, indices: Sequence[int], input_size: tuple[int, int]
) -> list[LabelledFrame]:
    """Astyx frames, each labelled with its run (`sequence_ids`) as its sequence."""
    root = Path(root) if root else default_root()
    runs = sequence_ids(root)
    frames = []
    log = MessageLog(astyx_messages(root, indices), "astyx")
    for frame in labelled_frames(log, input_size, "astyx"):
        index = int(frame.key.rsplit("/", 1)[1])
        frame.sequence = f"astyx/run{runs[index]:03d}"
        frame.key = f"astyx/{index:06d}"
        frames.append(frame)
    return frames


def astyx_split(
    root: Path | str | None = None,
    test_fraction: float = ASTYX_TEST_FRACTION,
    val_fraction: float = ASTYX_VAL_FRACTION,
) -> dict[str, list[int]]:
    """Frame indices of the ``train``, ``val`` and ``test`` parts, split between whole runs:
    walking back from the last run, runs go to test until it holds `test_fraction` of the frames,
    then to val until it holds `val_fraction`; the rest (the earlier runs) is train."""
    by_run = _runs(root)
    total = sum(len(v) for v in by_run.values())
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for run in sorted(by_run, reverse=True):
        if len(parts["test"]) < test_fraction * total:
            part = "test"
        elif len(parts["val"]) < val_fraction * total:
            part = "val"
        else:
            part = "train"
        parts[part] = by_run[run] + parts[part]
    return parts


def astyx_folds(
    k: int, root: Path | str | None = None, indices: Sequence[int] | None = None
) -> list[list[int]]:
    """`indices` (default: every frame) cut into `k` folds of consecutive whole runs of about
    equal size, for cross-validation."""
    by_run = _runs(root)
    wanted = None if indices is None else set(indices)
    runs = [[i for i in by_run[r] if wanted is None or i in wanted] for r in sorted(by_run)]
    runs = [r for r in runs if r]
    total = sum(map(len, runs))
    folds: list[list[int]] = [[] for _ in range(k)]
    done = 0
    for run in runs:
        fold = min(k - 1, done * k // max(1, total))
        folds[fold] += run
        done += len(run)
    return [f for f in folds if f]


def _runs(root: Path | str | None) -> dict[int, list[int]]:
    runs = sequence_ids(Path(root) if root else default_root())
    by_run: dict[int, list[int]] = {}
    for index, run in sorted(runs.items()):
        by_run.setdefault(run, []).append(index)
    return by_run


def recording_frames(path: Path | str, input_size: tuple[int, int]) -> list[LabelledFrame]:
    """The labelled frames of one recording (its file name is the sequence)."""
    with RecordingReader(path) as reader:
        return list(labelled_frames(reader, input_size, Path(path).stem))


def sim_frames(
    seeds: Sequence[int],
    input_size: tuple[int, int],
    duration_s: float,
    frame_step: int,
    scenarios: Sequence[str] = SIM_SCENARIOS,
) -> list[LabelledFrame]:
    """Simulated drives, seed k on scenario k mod len(scenarios), every `frame_step`-th frame."""
    frames = []
    for k, seed in enumerate(seeds):
        scenario = scenarios[k % len(scenarios)]
        name = f"sim-{scenario}-{seed}"
        log = MessageLog(simulate(scenario, seed=seed, duration_s=duration_s), name)
        frames += labelled_frames(log, input_size, name, frame_step)
    return frames
