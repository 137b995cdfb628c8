"""Training on several processes as if on one: sums over the replicas of a data-parallel run, and
batch norm over the whole global batch.

Under DistributedDataParallel each process (replica) sees a shard of the global batch, and DDP
averages the gradients. That gives the one-process result only when every quantity normalised
over the batch is normalised over the *global* batch:

- the losses divide sums by counts taken over the batch (heat-map peaks, box slots, frames with
  both sensors): each replica divides its own sum by the global count, times the replica count,
  so that DDP's average of the gradients is the gradient of the one-process loss;
- batch norm takes its statistics over the batch: `ReplicaBatchNorm` takes them over every
  replica's shard, through an all-reduce that autograd differentiates (the gradient flows back
  to every replica's inputs). PyTorch's own ``SyncBatchNorm`` does this on GPUs only; this one
  runs on gloo (CPU) and NCCL alike.

With one process, `Replicas` is the identity and nothing is converted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Replicas:
    """The processes of a data-parallel run (one, when not distributed)."""

    size: int = 1
    rank: int = 0

    @classmethod
    def current(cls) -> Replicas:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_world_size(), dist.get_rank())
        return cls()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the replicas, detached (a count or a statistic to divide by)."""
        value = value.detach().clone()
        if self.distributed:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def differentiable_sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the replicas; the gradient reaches every replica's `value`."""
        if not self.distributed:
            return value
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(value, op=dist.ReduceOp.SUM)


#: The one-process run.
LOCAL = Replicas()


class ReplicaBatchNorm(nn.modules.batchnorm._BatchNorm):
    """`nn.BatchNorm1d`/`2d` whose training statistics are those of the global batch.

    Same parameters and buffers (so the same state dict) as the module it replaces; in eval
    mode, or with one replica, it is exactly `nn.BatchNorm*`. The variance is computed in two
    passes (mean, then squared deviations), each one all-reduce, as precise as one process.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D to 5D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        replicas = Replicas.current()
        if not (self.training and replicas.distributed):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_n = x.new_tensor([x.numel() / max(1, x.shape[1])])
        sums = replicas.differentiable_sum(torch.cat([x.sum(dims), local_n]))
        n = sums[-1].detach()
        if float(n) < 2:
            raise ValueError("batch norm needs more than one value per channel over the replicas")
        mean = sums[:-1] / n
        centred = x - mean.reshape(shape)
        var = replicas.differentiable_sum((centred * centred).sum(dims)) / n  # biased, as BN
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y

    def count(self, mask: torch.Tensor) -> int:
        """How many of `mask` are set over the replicas (what this norm's batch will hold)."""
        return int(Replicas.current().sum(mask.sum()).item())


def count(norm: nn.Module, mask: torch.Tensor) -> int:
    """`mask`'s set entries over the batch that `norm` normalises: the global batch when it is a
    `ReplicaBatchNorm`, this process's otherwise."""
    return norm.count(mask) if isinstance(norm, ReplicaBatchNorm) else int(mask.sum())


def synchronise_batch_norms(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Replace, in place, every ``nn.BatchNorm1d/2d`` of `model` (but those under the module
    names in `skip`) by a `ReplicaBatchNorm` with the same state; how many were replaced."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if any(full == s or full.startswith(s + ".") for s in skip):
                continue
            if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d):
                new = ReplicaBatchNorm(
                    child.num_features,
                    child.eps,
                    child.momentum,
                    child.affine,
                    child.track_running_stats,
                ).to(next(iter(child.buffers()), torch.empty(0)).device)
                new.load_state_dict(child.state_dict())
                new.train(child.training)
                if child.affine:
                    new.weight.requires_grad_(child.weight.requires_grad)
                    new.bias.requires_grad_(child.bias.requires_grad)
                setattr(module, child_name, new)
                replaced += 1
    return replaced
