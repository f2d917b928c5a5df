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
    keeps a last, unevenly split batch exact."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) * local_samples for g in grads] +
                     [torch.tensor([float(local_samples)], device=grads[0].device, dtype=grads[0].dtype)])
    dist.all_reduce(flat)
    flat /= flat[-1].clone()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


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


class Distributed:
    default_enabled = True

    def __init__(self):
        self.local_samples = 0

    @hookimpl
    def kdlab_loss_terms(self, stage, batch):
        self.local_samples = len(batch.targets)  # no loss term: only notes this rank's batch size

    @hookimpl(wrapper=True)
    def kdlab_backward(self, stage, loss):
        result = yield
        if stage.world_size > 1:  # before clipping, unscaling and the step see the gradients
            average_gradients(stage.trainable_parameters(), self.local_samples)
        return result

    @hookimpl
    def kdlab_after_optimizer_step(self, stage):
        if stage.world_size > 1:
            broadcast_buffers(stage.student)
            broadcast_buffers(stage.extra)
