"""The global batch under data parallelism, for losses computed across a batch's samples
(contrastive InfoNCE, class centres, triplet mining): each rank holds a contiguous share of every
global batch, and :func:`gather` puts the shares back together with the gradient flowing to
each rank's own share, so that N processes compute what one process computes.

Written by hand because ``torch.distributed.nn.all_gather`` needs equal shapes on every rank
(the last global batch splits unevenly) and its backward sums the gradients of all ranks' copies
of the loss, which the core's count-weighted gradient averaging (``kdlab.infra.distributed``)
would then count again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


_cpu_group = None


def shard_sizes(local: int) -> list[int]:
    """Every rank's number of samples in this step: one small all-gather of CPU integers (a
    gloo group beside NCCL, so the step does not wait for the GPU). Needed before the forward
    pass, on every rank, even one whose share is empty."""
    global _cpu_group
    if _cpu_group is None:  # made once, by every rank at its first training step
        _cpu_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([local], dtype=torch.long), group=_cpu_group)
    return [int(s) for s in sizes]


class _GatherGlobal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        largest = max(sizes)
        padded = torch.zeros((largest, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank computes the same loss on the same global batch, so this rank's copy alone
        # gives d loss / d (own share); the N / n weight undoes the core's averaging of the
        # gradients weighted by each rank's sample count n out of N.
        sizes, rank = ctx.sizes, ctx.rank
        start = sum(sizes[:rank])
        own = grad[start : start + sizes[rank]] * (sum(sizes) / sizes[rank])
        return own, None, None


def gather(x: torch.Tensor, sizes: list[int] | None, rank: int) -> torch.Tensor:
    """``x`` (this rank's share, first dimension = samples) -> the global batch's, in global
    order. Unchanged in one process, and when some rank's share is empty: that rank computes no
    loss (see the loop), so it cannot join a collective. Then the global batch is smaller than
    the number of processes; with 2 processes the other rank holds all of it and the result is
    still exact, with more each rank's loss covers its own sample(s) for that one step."""
    if sizes is None or len(sizes) == 1 or 0 in sizes:
        return x
    return _GatherGlobal.apply(x, sizes, rank)
