"""Data-parallel training across processes (``kdlab run --nproc N``, or torchrun): gradients are
averaged over the ranks after every backward pass, and floating-point buffers (batch-norm running
statistics) are broadcast from rank 0 after every step, so every rank holds the same model.

Each rank trains on its contiguous part of every global batch (the loaders shard them), so N
processes compute the gradient of the same global batch as one process would. Rank 0 alone
writes files (checkpoints, TensorBoard, history, exported models); every rank reads them.
Hand-written rather than DistributedDataParallel because plugins call ``stage.student`` directly
(taps, pruning re-parametrisation, forward hooks) and a DDP wrapper would sit between them;
one all-reduce of the flattened gradients per step does the same averaging.

Batch normalisation in training normalises with the statistics of the *global* batch (the
student's and the extra modules' batch-norm layers, from the first epoch on), so that N processes
train a network with batch norm as one process does. Hand-written because
``torch.nn.SyncBatchNorm`` refuses CPU tensors (gloo) and its backward sums every rank's gradient
unweighted, which the count-weighted averaging here would then skew for uneven shares.
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


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with the backward that the count-weighted gradient averaging needs: rank
    s's gradient for its own contribution is sum_r n_r * g_r / n_s (g_r: rank r's upstream
    gradient, n_r its sample count), so that after averaging with weights n_s / N every rank holds
    the gradient of the one-process loss."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, local: int) -> torch.Tensor:
        ctx.local = local
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad * ctx.local
        dist.all_reduce(total)
        return total / ctx.local, None


def global_batch_norm(bn: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor, local: int) -> torch.Tensor:
    """``bn`` in training mode on this rank's share ``x``, normalised with the global batch's
    mean and (biased) variance, two passes over the data as one process computes them; running
    statistics updated with the global unbiased variance, as one process updates them."""
    x = x.float()  # as autocast runs batch norm: in float32
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
    first = _SumOverRanks.apply(torch.cat([x.sum(dims), count]), local)
    n = first[-1]
    mean = first[:-1] / n
    var = _SumOverRanks.apply(((x - mean.view(shape)) ** 2).sum(dims), local) / n
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(mean.detach().to(bn.running_mean.dtype), alpha=m)
            unbiased = var.detach() * (n / (n - 1)).clamp(min=0)
            bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.dtype), alpha=m)
    return y


def _synced_forward(bn, stage):
    plain = type(bn).forward

    def forward(x):
        sizes = stage.shard_sizes
        if not bn.training or not sizes or 0 in sizes or stage.phase != "train":
            return plain(bn, x)  # evaluation, the probe, or a step with an empty share
        return global_batch_norm(bn, x, len(stage.batch.index))

    return forward


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

    def __init__(self):
        self.synced: list[torch.nn.Module] = []

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        if stage.world_size > 1 and not self.synced:  # once; the extra modules exist by now
            for module in [*stage.student.modules(), *stage.extra.modules()]:
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.forward = _synced_forward(module, stage)
                    self.synced.append(module)
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

    @hookimpl(tryfirst=True)
    def kdlab_stage_end(self, stage):
        for module in self.synced:  # the plain modules again, before the export copies them
            del module.forward
        self.synced = []

    @hookimpl
    def kdlab_after_optimizer_step(self, stage):
        if stage.world_size > 1:
            broadcast_buffers(stage.student)
            broadcast_buffers(stage.extra)
