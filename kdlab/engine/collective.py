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
_holding_groups: dict[tuple[int, ...], object] = {}


def _cpu():
    """A gloo group beside NCCL, for small CPU integers that must not wait for the GPU."""
    global _cpu_group
    if _cpu_group is None:  # made once, by every rank at its first training step
        _cpu_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return _cpu_group


def sum_counts(counts: list[int]) -> list[int]:
    """Integers summed over all ranks (one all-reduce of CPU integers); called on every rank."""
    t = torch.tensor(counts, dtype=torch.long)
    dist.all_reduce(t, group=_cpu())
    return [int(c) for c in t]


def shard_sizes(batch) -> list[int]:
    """Every rank's number of samples in this step. A sharded loader gives them with the batch
    (``Batch.shards``); for a loader that does not, one small all-gather of CPU integers (a gloo
    group beside NCCL, so the step does not wait for the GPU) finds them. Called on every rank,
    even one whose share is empty, before the forward pass."""
    if batch.shards is not None:
        sizes = list(batch.shards)
    else:
        gathered = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, torch.tensor([len(batch.index)], dtype=torch.long), group=_cpu())
        sizes = [int(s) for s in gathered]
    holding = tuple(r for r, n in enumerate(sizes) if n > 0)
    if 1 < len(holding) < len(sizes) and holding not in _holding_groups:
        # a last global batch smaller than the number of processes: the ranks holding its samples
        # compute the in-batch losses among themselves (the others compute nothing). Creating a
        # group takes every rank, so it is done here, where all of them are; once per set of ranks.
        _holding_groups[holding] = dist.new_group(ranks=list(holding))
    return sizes


def holding_group(sizes: list[int]):
    """The process group of the ranks whose share of this step is not empty (None: all ranks)."""
    holding = tuple(r for r, n in enumerate(sizes) if n > 0)
    return None if len(holding) == len(sizes) else _holding_groups[holding]


class _GatherGlobal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int, group) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        largest = max(sizes)
        padded = torch.zeros((largest, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank computes the same loss on the same global batch, so this rank's copy alone
        # gives d loss / d (own share); the N / n weight undoes the core's averaging of the
        # gradients weighted by each rank's sample count n out of N.
        sizes, rank = ctx.sizes, ctx.rank
        start = sum(sizes[:rank])
        own = grad[start : start + sizes[rank]] * (sum(sizes) / sizes[rank])
        return own, None, None, None


def gather(x: torch.Tensor, sizes: list[int] | None, rank: int) -> torch.Tensor:
    """``x`` (this rank's share, first dimension = samples) -> the global batch's, in global
    order. Unchanged in one process. When the global batch is smaller than the number of
    processes, a rank with an empty share computes no loss (see the loop) and the ranks that
    hold samples gather among themselves."""
    if sizes is None:
        return x
    holding = [r for r, n in enumerate(sizes) if n > 0]
    if len(holding) <= 1:
        return x
    return _GatherGlobal.apply(x, [sizes[r] for r in holding], holding.index(rank), holding_group(sizes))
