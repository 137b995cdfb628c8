"""Training on several processes gives the one-process result: the same losses and gradients for
the same global batch and seed (gloo on loopback here, as under torchrun on CPUs)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fusion.learn.batches import collate, modality_flags, sample
from fusion.learn.config import TrainConfig
from fusion.learn.features import compute_features
from fusion.learn.train import _FromEarly, _shard, sample_rng
from fusion.model.losses import LOSS_PARTS, total_loss
from fusion.model.network import FusionNet
from fusion.model.replicas import ReplicaBatchNorm, Replicas, synchronise_batch_norms
from fusion.model.synthetic import tiny_config
from tests.test_train_eval import synthetic_frames

REPO = Path(__file__).resolve().parents[1]
#: Global batch of the gradient test: 5 frames, shared 3 + 2 between two processes (uneven on
#: purpose), with frames that have both sensors and frames that miss one.
BATCH = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step_gradients(rank: int, world: int, port: int, out: str) -> None:
    """One training step's losses and gradients on `world` processes; rank 0 saves them."""
    torch.set_num_threads(1)
    if world > 1:
        os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = tiny_config()
        features = compute_features(synthetic_frames(BATCH), cfg, "synthetic")
        torch.manual_seed(0)
        model = FusionNet(cfg)
        replicas = Replicas.current()
        net: nn.Module = _FromEarly(model)
        if replicas.distributed:
            assert synchronise_batch_norms(model, skip=("image.early",)) > 0
            net = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
        tcfg = TrainConfig(data="sim")
        samples, present, noise = [], [], []
        for position, index in zip(*_shard(np.arange(BATCH), replicas), strict=True):
            rng = sample_rng(0, 0, int(position))
            samples.append(sample(features, int(index), cfg, tcfg, rng))
            present.append(modality_flags(1, cfg, rng))
            noise.append(torch.from_numpy(rng.standard_normal(cfg.vae_latent)))
        batch = collate(samples)
        flags = torch.cat(present)
        outputs = net(batch, flags, torch.stack(noise).float())
        loss, parts = total_loss(outputs, batch["targets"], flags, cfg, replicas)
        loss.backward()
        if rank == 0:
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            buffers = {n: b for n, b in model.named_buffers() if "running" in n}
            torch.save({"parts": parts, "grads": grads, "buffers": buffers}, out)
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_losses_and_gradients_of_one(tmp_path) -> None:
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _step_gradients(0, 1, 0, str(one))
    mp.spawn(_step_gradients, args=(2, free_port(), str(two)), nprocs=2, join=True)
    a, b = torch.load(one), torch.load(two)
    assert tuple(a["parts"]) == LOSS_PARTS and a["parts"]["vae"] > 0  # the VAE took part
    for name in LOSS_PARTS:
        assert b["parts"][name] == pytest.approx(a["parts"][name], rel=1e-5), name
    assert set(a["grads"]) == set(b["grads"])
    for name, grad in a["grads"].items():
        scale = float(grad.abs().max()) + 1e-12
        assert float((grad - b["grads"][name]).abs().max()) / scale < 1e-3, name
    for name, buffer in a["buffers"].items():  # batch norm's running statistics: global batch
        torch.testing.assert_close(b["buffers"][name], buffer, rtol=1e-4, atol=1e-6)


def test_replica_batch_norm_is_batch_norm_on_one_process() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(16))
    synced = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(16))
    synced.load_state_dict(plain.state_dict())
    assert synchronise_batch_norms(synced) == 2
    assert isinstance(synced[1], ReplicaBatchNorm) and isinstance(synced[3], ReplicaBatchNorm)
    assert synced.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(6, 3, 2, 2)
    for mode in (True, False):
        plain.train(mode), synced.train(mode)
        torch.testing.assert_close(synced(x), plain(x))
    skipped = nn.Sequential(nn.BatchNorm2d(2))
    assert synchronise_batch_norms(skipped, skip=("0",)) == 0


def test_a_sample_draws_the_same_whatever_batch_or_process_holds_it() -> None:
    cfg = tiny_config()
    features = compute_features(synthetic_frames(4), cfg, "synthetic")
    tcfg = TrainConfig(data="sim")
    first = sample(features, 2, cfg, tcfg, sample_rng(0, 3, 17))
    again = sample(features, 2, cfg, tcfg, sample_rng(0, 3, 17))
    for key in ("raster", "grid"):
        np.testing.assert_array_equal(first[key], again[key])
    other = sample(features, 2, cfg, tcfg, sample_rng(0, 3, 18))
    assert not np.array_equal(first["raster"], other["raster"])
    positions, frames = _shard(np.array([9, 4, 7, 1, 3]), Replicas(2, 1))
    assert positions.tolist() == [3, 4] and frames.tolist() == [1, 3]


def _steps(run: Path) -> list[dict[str, float]]:
    with (run / "steps.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one(tmp_path) -> None:
    """`torchrun --nproc-per-node 2 -m fusion.cli train` on loopback: the first step's losses
    are the one-process ones; later steps drift only by float rounding that Adam's first
    normalised steps amplify (see docs/scaling.md)."""
    common = [
        *("train", "--sim-seeds", "11", "--val-seeds", "100", "--sim-duration", "1.2"),
        *("--epochs", "2", "--batch-size", "2", "--threads", "1", "--device", "cpu"),
        *("--no-progress", "--cache-dir", str(tmp_path / "cache")),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "fusion.cli", *common, "--out", str(tmp_path / "one")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    torchrun += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    two = subprocess.run(
        [*torchrun, "-m", "fusion.cli", *common, "--out", str(tmp_path / "two")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _steps(tmp_path / "one"), _steps(tmp_path / "two")
    assert len(a) == len(b) >= 4
    for name in LOSS_PARTS:
        assert b[0][name] == pytest.approx(a[0][name], rel=1e-5, abs=1e-7), name
    for row_a, row_b in zip(a, b, strict=True):
        total_a, total_b = (sum(r[n] for n in LOSS_PARTS) for r in (row_a, row_b))
        assert total_b == pytest.approx(total_a, rel=0.05)
    for name in ("best.safetensors", "last.safetensors", "final.safetensors", "log.csv"):
        assert (tmp_path / "two" / name).exists(), name
