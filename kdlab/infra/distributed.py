"""Data-parallel training across processes (``kdlab run --nproc N``, or torchrun): gradients are
averaged over the ranks after every backward pass, and floating-point buffers (batch-norm running
statistics) are broadcast from rank 0 after every step, so every rank holds the same model.

Each rank trains on its contiguous part of every global batch (the loaders shard them), so N
processes compute the gradient of the same global batch as one process would. Rank 0 alone
writes files (checkpoints, TensorBoard, history, exported models); every rank reads them.
Hand-written rather than DistributedDataParallel because plugins call ``stage.student`` directly
(taps, pruning re-parametrisation, forward hooks) and a DDP wrapper would sit between them;
one all-reduce of the flattened gradients per step does the same averaging.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kdlab import hookimpl


def average_gradients(params: list[torch.nn.Parameter], local_samples: int) -> None:
    """Replace each rank's gradient (a mean over its samples) by the mean over all ranks' samples:
    sum of (gradient x local count) / total count, in one all-reduce. Weighting by the counts
    keeps a last, unevenly split batch exact (a rank with no samples adds nothing).

    Every rank sends a buffer of the same size whatever its gradients: a parameter without a
    gradient here sends zeros and a 0 flag. A parameter that no rank gave a gradient stays
    without one (as in one process, where the optimizer then skips it)."""
    if not params:
        return
    device = params[0].device
    dtype = next((p.grad.dtype for p in params if p.grad is not None), params[0].dtype)
    parts, flags = [], []
    for p in params:
        parts.append(p.grad.reshape(-1).to(dtype) * local_samples if p.grad is not None
                     else torch.zeros(p.numel(), device=device, dtype=dtype))
        flags.append(float(p.grad is not None))
    flat = torch.cat(parts + [torch.tensor(flags + [float(local_samples)], device=device, dtype=dtype)])
    dist.all_reduce(flat)
    # one host sync per step (only in distributed training): the sample count and the flags
    *had_grad, total = flat[-1 - len(params):].tolist()
    offset = 0
    for p, had in zip(params, had_grad):
        if had > 0:  # some rank had a gradient for it
            g = flat[offset : offset + p.numel()].view_as(p) / total
            if p.grad is None:
                p.grad = g.to(p.dtype).clone()
            else:
                p.grad.copy_(g)
        offset += p.numel()


def broadcast_buffers(module: torch.nn.Module) -> None:
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.broadcast(flat, src=0)
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's random stream in one epoch."""
    return (seed * 1_000_003 + epoch) * 1009 + rank + 1


class Distributed:
    default_enabled = True

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        # Every rank starts from the same seed (identical initial weights); during training each
        # rank draws its own dropout masks and augmentation. Re-seeding at every epoch start, a
        # function of (seed, epoch, rank), keeps resume exact: checkpoints are taken between epochs.
        if stage.world_size > 1:
            torch.manual_seed(rank_seed(stage.recipe.seed, epoch, stage.rank))

    @hookimpl(wrapper=True)
    def kdlab_backward(self, stage, loss):
        result = yield
        if stage.world_size > 1:  # before clipping, unscaling and the step see the gradients
            average_gradients(stage.trainable_parameters(), len(stage.batch.index))
        return result

    @hookimpl
    def kdlab_after_optimizer_step(self, stage):
        if stage.world_size > 1:
            broadcast_buffers(stage.student)
            broadcast_buffers(stage.extra)
