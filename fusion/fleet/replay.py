"""One recording replayed in lock-step in this process: what a fleet task does.

`replay_recording` plays a recording as ``fusion play --lockstep`` does (the player's own
`Player.lockstep_stream`: its order, restamping and steps, the topics ``fusion eval --replay``
plays) into a lock-step `FusionPipeline` through `FusionPipeline.feed`, the door the fusion
node uses, the way ``tests/process_replay.py`` and the training data (`fusion.learn.data`) do.
The model runs fp32 PyTorch (``--backend torch``) on one CPU thread by default: the backend
``auto`` would time the backends and might pick another on another run, and another thread count
may round differently, so both are fixed for results that are identical run after run and task
after task. It returns a `RecordingResult`: a digest of the Detections, accuracy (scored by
`fusion.learn.replay.score_answers`, the protocol of ``fusion eval --replay``) where the
recording has ground truth, latency per stage, throughput, modes, health and every refused or
dropped input by reason.

Surprises: the player's clock is fixed at 0 (as in the process replay), so the outputs'
``capture_ns`` are the recorded times less the window's start and their digest leaves out
``capture_ns`` and ``trace`` (the wall-clock stamps, as the process replay does) but keeps
``trace["recorded_capture_ns"]``. The pipeline's own clock is the monotonic one: only its trace
stamps use it. Each input is stamped ``received`` as the node's subscriber would, so the stages
``sync`` .. ``decode`` and ``received -> decoded`` (the node's lock-step latency) are timed; the
stages from ``capture`` are not, since capture stamps in lock-step are recorded times.

Nothing a recording holds crashes a task: a missing, unreadable or camera-less recording gives a
result with ``error`` set; a damaged one is replayed up to its damage, which ``damage`` names
(and is not scored).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fusion.core.latency import LatencyHistogram, stage_latencies_ms
from fusion.errors import CorruptRecordingError, FusionError, RecordingError, ReplayError
from fusion.learn.replay import PLAYED_TOPICS, score_answers
from fusion.logs.framing import METADATA_NAME
from fusion.logs.player import ANSWER_TOPIC, CONTROL_TOPIC, Player
from fusion.logs.reader import RecordingReader
from fusion.model.weights import DEFAULT_WEIGHTS, file_digest
from fusion.perception.pipeline import FusionPipeline, PipelineConfig
from fusion.wire.messages import Detections

log = logging.getLogger(__name__)

#: The node's lock-step latency (the pipeline's own histogram): a frame's receipt -> decoded.
LOCKSTEP_LATENCY = "received -> decoded"
#: Pipeline counters that are not refusals or drops (the node's summary leaves them out too).
NOT_DROPS = ("fused", "camera_only", "radar_only", "camera_in", "radar_in", "health_flagged")
#: URI schemes read through `pyarrow.fs` (copied into the task's scratch folder first).
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "abfss://")


@dataclass(frozen=True)
class ReplayOptions:
    """How a recording is replayed; identical options give identical results."""

    weights: str = str(DEFAULT_WEIGHTS)
    end_s: float | None = None  # replay only the first seconds (None: all of it)
    threads: int = 1  # torch threads per task
    backend: str = "torch"  # never "auto": its timed choice may differ between runs
    device: str = "cpu"
    # Where to write each replayed drive (`save_replayed`), a folder every worker can write to;
    # None: nowhere. It changes no result.
    save_dir: str | None = None


@dataclass
class RecordingResult:
    """What one recording's replay gave; ``to_dict`` is its JSON."""

    recording: str
    weights: str = ""
    error: str = ""  # empty when the replay finished
    attempts: int = 1
    retries: list[str] = field(default_factory=list)  # why each earlier attempt did not finish
    frames: int = 0  # camera frames played
    outputs: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    invalid: int = 0
    health_flagged: int = 0
    health_score_mean: float | None = None
    drops: dict[str, int] = field(default_factory=dict)  # refused or dropped inputs, by reason
    damage: str = ""  # where a damaged recording stopped
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    load_s: float = 0.0  # model load (0 when this worker had it) and warm-up
    replay_s: float = 0.0  # the lock-step replay itself
    frames_per_s: float = 0.0  # outputs / replay_s
    #: EvalResult.to_dict() plus counts; None without ground truth or when the file is damaged
    accuracy: dict | None = None
    digest: str = ""  # of the Detections, wall-clock stamps left out (`detections_digest`)
    saved: str = ""  # the replayed drive's file (`ReplayOptions.save_dir`), if asked for
    worker: str = ""  # host:pid of the process that ran it
    #: per stage, every frame's latency (ms), for fleet-wide percentiles; not in the JSON
    stage_samples_ms: dict[str, list[float]] = field(default_factory=dict, repr=False)
    #: the Detections themselves when asked for (tests); not in the JSON
    detections: list[Detections] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def name(self) -> str:
        return Path(self.recording).name

    @property
    def mean_ap(self) -> float | None:
        value = (self.accuracy or {}).get("mean_ap")
        return None if value is None else float(value)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def outcome(self) -> dict:
        """What must be the same wherever and however often the recording is replayed (all
        but the timings and where it ran)."""
        keys = ("recording", "weights", "error", "frames", "outputs", "modes", "invalid")
        keys += ("health_flagged", "health_score_mean", "drops", "damage", "accuracy", "digest")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["stage_samples_ms"], out["detections"]
        return out | {"ok": self.ok}


def detections_digest(outputs: Iterable[Detections]) -> str:
    """SHA-256 (16 hex digits) of the outputs in order: every field and every box's bytes but
    ``capture_ns`` (the replay's offset) and the trace's wall-clock stamps (its
    ``recorded_capture_ns`` is kept)."""
    digest = hashlib.sha256()
    for out in outputs:
        fields = {
            "seq": out.seq,
            "mode": out.mode,
            "valid": out.valid,
            "budget_miss": out.budget_miss,
            "clock": out.clock,
            "sensor_id": out.sensor_id,
            "source_seqs": sorted(out.source_seqs.items()),
            "recorded_capture_ns": out.trace.get("recorded_capture_ns"),
            "health": [(k, float(v).hex()) for k, v in sorted(out.health.items())],
        }
        digest.update(json.dumps(fields, sort_keys=True).encode())
        digest.update(np.ascontiguousarray(out.objects).tobytes())
    return digest.hexdigest()[:16]


_DETECTORS: dict[tuple, object] = {}


def _detector(options: ReplayOptions):
    """The options' detector, loaded once per process (a Ray worker keeps it between tasks)."""
    from fusion.model.detector import Detector

    key = (str(Path(options.weights).resolve()), file_digest(options.weights))
    key += (options.threads, options.backend, options.device)
    if key not in _DETECTORS:
        _DETECTORS.clear()  # one model per worker process at a time
        _DETECTORS[key] = Detector.load(
            options.weights, device=options.device, threads=options.threads, backend=options.backend
        )
    return _DETECTORS[key]


def local_path(recording: str, scratch: Path) -> Path:
    """A local file for `recording`: a path (or ``file://``) as it is, where it lies; an
    object-store URI (s3://, gs://, ...) copied into `scratch` through `pyarrow.fs` (a lock-step
    replay reads the file whole and in order, seeking by its index)."""
    if not recording.startswith(REMOTE_SCHEMES):
        return Path(recording.removeprefix("file://"))
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(recording)
        target = scratch / Path(path).name
        fs.copy_files(path, str(target), source_filesystem=filesystem)
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise RecordingError(f"cannot fetch {recording}: {exc}") from exc
    return target


def replay_recording(
    recording: str,
    options: ReplayOptions,
    on_output: Callable[[int], None] | None = None,
    keep_detections: bool = False,
) -> RecordingResult:
    """Replay `recording` in lock-step in this process (see the module docstring).
    `on_output(n)` is called after the n-th output (fault injection: the fleet's kill hook);
    `keep_detections` keeps the outputs in the result. A recording that cannot be replayed
    gives a result with ``error`` set; only unexpected errors (bugs, out of memory) raise."""
    result = RecordingResult(recording, weights=options.weights)
    result.worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix="fusion-fleet-") as scratch:
            _replay(local_path(recording, Path(scratch)), options, result, on_output)
    except (FusionError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.stage_samples_ms.clear()
    if not keep_detections:
        result.detections = None
    return result


def _replay(
    path: Path,
    options: ReplayOptions,
    result: RecordingResult,
    on_output: Callable[[int], None] | None,
) -> None:
    started = time.perf_counter()
    detector = _detector(options)
    detector.warm_up()  # also starts the health cues afresh for this recording
    result.load_s = time.perf_counter() - started
    with RecordingReader(path) as reader:
        topics = tuple(t for t in PLAYED_TOPICS if t in reader.topics)
        if "camera" not in topics:
            raise ReplayError(f"{path} has no camera topic to replay (it has {topics})")
        has_truth = "ground_truth" in reader.topics
        player = Player.in_process(reader, topics=topics, end_s=options.end_s)
        pipeline = FusionPipeline(detector, PipelineConfig(lockstep=True))
        outputs: list[Detections] = []
        started = time.perf_counter()
        for topic, msg in player.lockstep_stream():
            if topic != CONTROL_TOPIC:
                msg.stamp("received", time.monotonic_ns())  # as the node's subscriber does
            for out in pipeline.feed(topic, msg):
                outputs.append(out)
                if on_output is not None:
                    on_output(len(outputs))
        result.replay_s = time.perf_counter() - started
    _summarise(result, outputs, pipeline, player)
    if has_truth and not result.damage:  # scoring reads the file again, and stops at damage
        answers = {o.source_seqs["camera"]: o for o in outputs if "camera" in o.source_seqs}
        scores, counts = score_answers(path, answers, detector.cfg.class_names, options.end_s)
        result.accuracy = scores.to_dict() | {"counts": counts}
    if options.save_dir:
        result.saved = str(save_replayed(path, outputs, Path(options.save_dir)))
    result.detections = outputs


def save_replayed(recording: Path, outputs: Sequence[Detections], out_dir: Path) -> Path:
    """Write ``out_dir/<name>.replayed.mcap``: the recording's messages as recorded, and the
    replay's `Detections` beside them, put back on the recording's clock (each at its camera
    frame's recorded capture time, also its log time; the trace of the replay is kept), so that
    `fusion export foxglove|rerun` shows what the model saw and what it answered on one
    timeline. An existing file is replaced (the replay is deterministic)."""
    from fusion.logs.recover import copy_messages
    from fusion.logs.writer import RecordingWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{recording.stem}.replayed.mcap"
    partial = target.with_name(target.name + ".partial")
    with RecordingReader(recording) as reader:
        meta = dict(reader.metadata.get(METADATA_NAME, {}))
        clock = _camera_clock(reader)
        meta["replayed_from"] = str(recording)
        with RecordingWriter(partial, metadata=meta) as writer:
            try:
                copy_messages(reader, writer)
            except CorruptRecordingError as exc:  # the replay stopped at the damage too
                log.warning("%s: copied up to the damage: %s", recording, exc)
            for det in outputs:
                det = copy.copy(det)
                det.capture_ns = det.trace.get("recorded_capture_ns", det.capture_ns)
                det.clock = clock
                writer.write(ANSWER_TOPIC, det, det.capture_ns)
    partial.replace(target)
    return target


def _camera_clock(reader: RecordingReader) -> str:
    for record in reader.messages(topics=["camera"]):
        return record.decode().clock
    return "monotonic"


def _summarise(
    result: RecordingResult, outputs: list[Detections], pipeline: FusionPipeline, player: Player
) -> None:
    counters = pipeline.counters
    result.frames = player.stats.per_topic.get("camera", 0)
    result.outputs = len(outputs)
    result.modes = dict(Counter(o.mode for o in outputs))
    result.invalid = sum(not o.valid for o in outputs)
    result.health_flagged = counters["health_flagged"]
    scores = [o.health["score"] for o in outputs if "score" in o.health]
    result.health_score_mean = float(np.mean(scores)) if scores else None
    drops = {k: v for k, v in counters.items() if k not in NOT_DROPS and v}
    answered = {o.source_seqs["camera"] for o in outputs if "camera" in o.source_seqs}
    unanswered = result.frames - len(answered)
    for reason, count in (("undecodable", player.stats.undecodable), ("unanswered", unanswered)):
        if count:
            drops[reason] = count
    result.drops = dict(sorted(drops.items()))
    result.damage = player.stats.damage
    result.digest = detections_digest(outputs)
    samples: dict[str, list[float]] = {}
    for out in outputs:
        for stage, ms in stage_latencies_ms(out.trace, out.capture_ns).items():
            if not stage.startswith("capture"):  # recorded capture times: not a latency
                samples.setdefault(stage, []).append(ms)
        if "received" in out.trace and "decoded" in out.trace:
            samples.setdefault(LOCKSTEP_LATENCY, []).append(
                (out.trace["decoded"] - out.trace["received"]) / 1e6
            )
    result.stage_samples_ms = samples
    result.latency_ms = percentiles(samples)
    result.frames_per_s = result.outputs / result.replay_s if result.replay_s > 0 else 0.0


def percentiles(samples_ms: dict[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per stage: p50/p95/p99/max (ms) and n, from `fusion.core.latency.LatencyHistogram`."""
    out = {}
    for stage, values in samples_ms.items():
        histogram = LatencyHistogram()
        for value in values:
            histogram.add(value)
        out[stage] = histogram.percentiles()
    return out


def replay_all(
    recordings: Sequence[str],
    options: Sequence[ReplayOptions],
    on_result: Callable[[RecordingResult], None] | None = None,
    keep_detections: bool = False,
) -> list[RecordingResult]:
    """The fleet without Ray: each (recording, options) replayed here, one after another (the
    local command the fleet's results are checked against)."""
    results = []
    for recording, opts in zip(recordings, options, strict=True):
        result = replay_recording(recording, opts, keep_detections=keep_detections)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results
