"""`fusion train` on several processes: torchrun's environment, the process group, and what
only the first process does.

    torchrun --nproc-per-node 2 -m fusion.cli train --threads 1 ...      # gloo on CPUs
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 \\
        -m fusion.cli train ...                                          # NCCL, one GPU each

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them (or with a world of
one) training is the one-process loop, untouched. The global batch stays ``--batch-size``: each
process takes its share of every batch, so the same seed and batch size give the one-process
result within float tolerance (`fusion.model.replicas` says how), on any number of processes.
Only the first process (rank 0) writes files, validates and prints; the others wait for it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from fusion.errors import ConfigError
from fusion.model.replicas import Replicas

log = logging.getLogger(__name__)

#: How long a process waits for the others at a collective before failing: the first process
#: may be computing the backbone features of the whole data set meanwhile.
TIMEOUT = datetime.timedelta(minutes=60)


def world_size_from_environment() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from exc


def start(device: str) -> Replicas:
    """Join the process group torchrun describes (NCCL when training on CUDA, gloo otherwise);
    the one-process `Replicas` outside torchrun."""
    if world_size_from_environment() <= 1:
        return Replicas()
    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        backend = "nccl" if cuda else "gloo"
        if cuda:
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend, timeout=TIMEOUT)
        log.info(
            "process %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend()
        )
    return Replicas.current()


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_for(replicas: Replicas, device: torch.device) -> torch.device:
    """This process's device: its own GPU (``LOCAL_RANK``) when training on CUDA."""
    if replicas.distributed and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def barrier(replicas: Replicas) -> None:
    if replicas.distributed:
        dist.barrier()


def from_first(replicas: Replicas, value: Any) -> Any:
    """Rank 0's `value` on every process (any picklable object)."""
    if not replicas.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def first_alone(replicas: Replicas) -> Iterator[None]:
    """Rank 0 runs the block before the others do (it fills the feature cache, which the others
    then read instead of computing it again)."""
    if replicas.rank != 0:
        barrier(replicas)
    yield
    if replicas.rank == 0:
        barrier(replicas)
