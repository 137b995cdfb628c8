"""The fleet on Ray: connect to (or start) a cluster and run one task per recording, retried.

`connect` starts a local Ray instance (``--address local``: no dashboard, one CPU per worker,
a small object store) or joins a running cluster (``auto`` or ``HOST:PORT``). `run_fleet` turns
each (recording, options) into a task, `fusion.fleet.replay.replay_recording` in a Ray worker,
with one CPU per torch thread, so a worker replays one recording at a time; a worker keeps its
loaded model for its next task. A task whose worker dies (killed, out of memory) or that raises
something unexpected is retried up to ``max_retries`` times; an `AttemptLog` actor counts the
attempts, so the table says how many each recording took and why the earlier ones failed. A
recording that cannot be replayed (missing, not a recording, no camera) is not retried: its
result carries the error. Results come back as they finish, in any order; `run_fleet` returns
them in the order asked.

Workers get ``OMP_NUM_THREADS=1`` and passive OpenMP waiting (`WORKER_ENV`), so tasks sharing
the cores do not spin against each other.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import ray

from fusion.fleet.attempts import AttemptLog
from fusion.fleet.replay import RecordingResult, ReplayOptions, replay_recording

#: Retries of a task after its first attempt (a killed worker, an unexpected error).
DEFAULT_MAX_RETRIES = 2
#: Object store of a local Ray instance: results are small (the Detections stay in the task).
LOCAL_OBJECT_STORE_BYTES = 200 * 2**20
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
#: Fault injection (``--inject-kill``): the first attempt kills its own worker after this many
#: outputs, in the middle of the replay.
KILL_AFTER_OUTPUTS = 5


def connect(address: str, workers: int | None = None) -> bool:
    """Join the cluster at `address` (``auto``, ``HOST:PORT``) or start a local one
    (``local``, with `workers` CPUs: default every core). Returns whether this call started the
    connection (the caller then shuts it down); an existing connection is reused."""
    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "runtime_env": {"env_vars": WORKER_ENV}}
    if address == "local":
        ray.init(
            include_dashboard=False,
            num_cpus=workers or os.cpu_count(),
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            **common,
        )
    else:
        ray.init(address=address, **common)
    return True


def cluster_info() -> dict:
    """The cluster the fleet ran on: live nodes and CPUs."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "nodes": len(nodes),
        "cpus": int(ray.cluster_resources().get("CPU", 0)),
        "node_addresses": sorted(n.get("NodeManagerAddress", "") for n in nodes),
    }


def fleet_task(
    index: int,
    recording: str,
    options: ReplayOptions,
    attempts,
    kill_marker: str | None = None,
    keep_detections: bool = False,
) -> RecordingResult:
    """One attempt at one recording, in a Ray worker (see the module docstring). The attempt
    log is told without waiting for it: a task blocked in ``ray.get`` hands its CPU back to Ray,
    which then starts another task on it. `kill_marker` (fault injection): a file that does not
    exist yet makes this attempt create it and kill its own worker mid-replay."""
    attempts.begin.remote(index)
    hook = None
    if kill_marker is not None and not Path(kill_marker).exists():
        Path(kill_marker).touch()

        def hook(outputs: int) -> None:
            if outputs == KILL_AFTER_OUTPUTS:
                os.kill(os.getpid(), signal.SIGKILL)

    try:
        return replay_recording(recording, options, hook, keep_detections)
    except BaseException as exc:
        attempts.failed.remote(index, f"{type(exc).__name__}: {exc}")
        raise


def run_fleet(
    recordings: Sequence[str],
    options: Sequence[ReplayOptions],
    max_retries: int = DEFAULT_MAX_RETRIES,
    on_result: Callable[[RecordingResult], None] | None = None,
    inject_kill: Collection[str] = (),
    keep_detections: bool = False,
) -> list[RecordingResult]:
    """Replay each of `recordings` with its `options` as a Ray task on the connected cluster
    (`connect` first); `on_result` sees each result as it comes. `inject_kill`: file names of
    recordings whose first attempt kills its worker mid-replay (fault injection for tests; the
    marker that says an attempt was the first is a file on this host, so one host only)."""
    log = ray.remote(AttemptLog).options(num_cpus=0).remote()
    ray.get(log.report.remote(-1, True))  # alive before any attempt tells it it began
    markers = Path(tempfile.mkdtemp(prefix="fusion-fleet-kill-"))  # on this host: tests only
    refs = {}
    for index, (recording, opts) in enumerate(zip(recordings, options, strict=True)):
        task = ray.remote(fleet_task).options(
            num_cpus=opts.threads,
            max_retries=max_retries,
            retry_exceptions=True,
            name=f"fleet:{Path(recording).name}",
        )
        kill = str(markers / str(index)) if Path(recording).name in inject_kill else None
        refs[task.remote(index, recording, opts, log, kill, keep_detections)] = index
    results: list[RecordingResult | None] = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        index = refs[done[0]]
        try:
            result = ray.get(done[0])
            finished = True
        except ray.exceptions.RayError as exc:
            result = RecordingResult(recordings[index], weights=options[index].weights)
            result.error = f"failed after every attempt: {_first_line(exc)}"
            finished = False
        result.attempts, result.retries = ray.get(log.report.remote(index, finished))
        results[index] = result
        if on_result is not None:
            on_result(result)
    ray.kill(log)
    shutil.rmtree(markers, ignore_errors=True)
    return [r for r in results if r is not None]


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"
