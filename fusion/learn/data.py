"""The data sets training and evaluation share: labelled frames made by the fusion node's code.

Every source becomes a time-ordered stream of ``(topic, message)`` pairs, exactly what a
recording holds, and `labelled_frames` replays it through the fusion node's own pipeline in data
time (`fusion.perception.pipeline.replay_frames`): the same sync (each camera frame paired with
the nearest radar scan within the slop, as in lock-step replay), the same motion compensation,
the same radar calibration, the same image decode. A frame keeps the ground truth stamped with
its capture time. Validation is always a different sequence than training.

- Astyx (`astyx_frames`): the importer's messages for chosen frame indices; `astyx_split` splits
  whole runs (test: the last runs holding 20 % of the frames, 356-445; val: the runs before them
  holding 15 %, 288-355; train: the rest), `astyx_folds` cuts all runs into k folds for
  cross-validation.
- Recordings (`recording_frames`): any MCAP recording with ground truth.
- Simulated drives (`sim_frames`): `fusion.sim.simulate` in memory, every n-th frame.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion.datasets.astyx import default_root, read_frame, sequence_ids
from fusion.logs.reader import recorded_messages
from fusion.perception.frame import FrameInputs
from fusion.perception.pipeline import AssembledFrame, PipelineConfig, replay_frames
from fusion.sim import simulate
from fusion.wire.messages import GroundTruth, Message

ASTYX_TEST_FRACTION = 0.2
ASTYX_VAL_FRACTION = 0.15
SIM_SCENARIOS = ("city", "highway", "night")
#: How long (log time) a frame waits for ground truth stamped with its capture time.
GROUND_TRUTH_WAIT_NS = 1_000_000_000


@dataclass
class LabelledFrame:
    """One frame as the model is given it, with its ground truth."""

    inputs: FrameInputs
    boxes: np.ndarray  # (M,) GT_BOX_DTYPE, reference frame
    sequence: str  # the drive or run it comes from (splits never cut one)
    key: str  # unique name of the frame


def labelled_frames(
    messages: Iterable[tuple[str, Message]],
    input_size: tuple[int, int],
    sequence: str,
    frame_step: int = 1,
    config: PipelineConfig | None = None,
    fused_only: bool = True,
) -> Iterator[LabelledFrame]:
    """Every `frame_step`-th frame the fusion node would run the model on, with the ground truth
    stamped at its capture time (frames without ground truth are skipped, and with `fused_only`
    frames the node would not fuse: training makes its own camera- and radar-only samples)."""
    truths: dict[int, np.ndarray] = {}
    latest_ns = [0]

    def tap(stream: Iterable[tuple[str, Message]]) -> Iterator[tuple[str, Message]]:
        for topic, msg in stream:
            latest_ns[0] = max(latest_ns[0], int(msg.capture_ns))
            if isinstance(msg, GroundTruth):
                truths[msg.capture_ns] = msg.boxes
            else:
                yield topic, msg

    # A frame can be settled before its ground truth (stamped with its capture time) is read.
    pending: deque[AssembledFrame] = deque()

    def release(final: bool) -> Iterator[LabelledFrame]:
        while pending and (
            final
            or pending[0].capture_ns in truths
            or latest_ns[0] - pending[0].capture_ns > GROUND_TRUTH_WAIT_NS
        ):
            frame = pending.popleft()
            boxes = truths.pop(frame.capture_ns, None)
            if boxes is not None and (not fused_only or frame.mode == "fused"):
                yield LabelledFrame(
                    frame.inputs, boxes, sequence, f"{sequence}/{frame.sources['camera']}"
                )

    for k, frame in enumerate(replay_frames(tap(messages), input_size, config)):
        if k % frame_step == 0:
            pending.append(frame)
        yield from release(final=False)
    yield from release(final=True)


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
    for frame in labelled_frames(astyx_messages(root, indices), input_size, "astyx"):
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
    return list(labelled_frames(recorded_messages(path), input_size, Path(path).stem))


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
        messages = simulate(scenario, seed=seed, duration_s=duration_s)
        frames += labelled_frames(messages, input_size, f"sim-{scenario}-{seed}", frame_step)
    return frames
