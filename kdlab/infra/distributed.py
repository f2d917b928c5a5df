"""Data-parallel training across processes (``kdlab run --nproc N``, or torchrun).

Each rank trains on its contiguous part of every global batch (the loaders shard them), so N
processes compute the gradient of the same global batch as one process would. Rank 0 alone
writes files (checkpoints, TensorBoard, history, exported models); every rank reads them.

Gradients: from a stage's second step on, the student is wrapped in
``torch.nn.parallel.DistributedDataParallel`` (``stage.data_parallel``; ``stage.student`` stays
the raw module, for taps, pruning and export), which all-reduces them in buckets while the
backward pass still runs. Its communication hook weights each rank's gradient (a mean over its
samples) by its share of the global batch instead of DDP's equal weights, so a last, unevenly
split batch is exact. Parameters that a step's forward does not reach are allowed
(``find_unused_parameters``). What DDP does not cover is averaged by hand after the backward
pass, with the same weights, in one all-reduce: the plugins' extra modules (their parameters are
used outside the student's forward, which DDP's bookkeeping forbids); every trainable parameter
in the first step (which shows whether DDP can take over), in a step where some rank's share is
empty (that rank runs no forward) and in one where a plugin called the student without the
wrapper; and the whole stage when its loss leaves some of the student's parameters without a
gradient (feature KD alone: the head). Floating-point buffers (batch-norm running statistics) are broadcast from rank 0
after every step, so every rank holds the same model.

Batch normalisation in training normalises with the statistics of the *global* batch (the
student's and the extra modules' batch-norm layers, from the first epoch on), so that N processes
train a network with batch norm as one process does. Hand-written because
``torch.nn.SyncBatchNorm`` refuses CPU tensors (gloo) and its backward sums every rank's gradient
unweighted, which the count-weighted averaging here would then skew for uneven shares.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import attrs

from kdlab import KdlabError, hookimpl
from kdlab.engine import collective
from kdlab.engine.limits import torch_seed
from kdlab.engine.types import run_model


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


class _BatchForward(torch.nn.Module):
    """The student as a module of a batch: DDP wraps a module and calls its ``forward``, and
    sequence models take the whole batch."""

    def __init__(self, student: torch.nn.Module):
        super().__init__()
        self.student = student

    def forward(self, batch):
        return run_model(self.student, batch)


class DataParallelStudent:
    """``stage.data_parallel``: the student in DistributedDataParallel, for the first training
    forward of a step. A second forward in the same step (GKD and sequence KD also run the
    student on generated text) calls the plain student: DDP allows one forward per backward, and
    the backward pass sums both uses of a parameter before DDP's hook sees its gradient."""

    def __init__(self, student: torch.nn.Module, weight: list[float], stock: bool = False):
        self.ddp = DistributedDataParallel(_BatchForward(student), broadcast_buffers=False,
                                           find_unused_parameters=True)
        if not stock:  # even shards: DDP's own mean is the count-weighted one
            self.ddp.register_comm_hook(weight, _weighted_allreduce)
        self.student = student
        self.used = False  # in this step; reset after the backward pass

    def __call__(self, batch):
        if self.used:
            return run_model(self.student, batch)
        self.used = True
        return self.ddp(batch)


def _weighted_allreduce(weight: list[float], bucket):  # no return annotation: DDP checks it
    """DDP communication hook: sum over ranks of (this rank's share of the samples x its gradient
    bucket), the count-weighted mean; ``weight[0]`` is set before each step's backward pass."""
    buffer = bucket.buffer().mul_(weight[0])
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with the backward that the count-weighted gradient averaging needs: rank
    s's gradient for its own contribution is sum_r n_r * g_r / n_s (g_r: rank r's upstream
    gradient, n_r its sample count), so that after averaging with weights n_s / N every rank holds
    the gradient of the one-process loss."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, local: int, group) -> torch.Tensor:
        ctx.local, ctx.group = local, group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad * ctx.local
        dist.all_reduce(total, group=ctx.group)
        return total / ctx.local, None, None


def global_batch_norm(bn: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor, local: int,
                      group=None) -> torch.Tensor:
    """``bn`` in training mode on this rank's share ``x``, normalised with the global batch's
    mean and (biased) variance, two passes over the data as one process computes them; running
    statistics updated with the global unbiased variance, as one process updates them.
    ``group``: the ranks holding samples in this step (None: all of them)."""
    x = x.float()  # as autocast runs batch norm: in float32
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
    first = _SumOverRanks.apply(torch.cat([x.sum(dims), count]), local, group)
    n = first[-1]
    mean = first[:-1] / n
    var = _SumOverRanks.apply(((x - mean.view(shape)) ** 2).sum(dims), local, group) / n
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
        if not bn.training or not sizes or stage.phase != "train":
            return plain(bn, x)  # evaluation or the probe
        holding = sum(n > 0 for n in sizes)
        if holding == 1:  # a last global batch that one rank holds whole: as in one process
            return plain(bn, x)
        return global_batch_norm(bn, x, len(stage.batch.index), collective.holding_group(sizes))

    return forward


def broadcast_buffers(buffers: list[torch.Tensor]) -> None:
    """Rank 0's values of ``buffers`` on every rank, in one broadcast."""
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.broadcast(flat, src=0)
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def _differing_buffers(roots: list[torch.nn.Module], synced: list[torch.nn.Module]):
    """(buffers to broadcast after every step, buffers to broadcast after a step that one rank
    held alone). Batch norm layers normalised with the global batch update their running
    statistics identically on every rank, except in a step whose samples one rank holds (it
    alone runs them). A module that declares ``buffers_synced = True`` updates its buffers from
    the global batch itself (CRD's memory banks) and is never broadcast; any other module's
    floating-point buffers are, after every step (what a module does with them is unknown)."""
    every, lone, seen = [], [], set()
    synced_ids = {id(m) for m in synced}
    for root in roots:
        skip: set[int] = set()
        for module in root.modules():
            if id(module) in skip or id(module) in seen:
                continue
            seen.add(id(module))
            if getattr(module, "buffers_synced", False):
                skip |= {id(m) for m in module.modules()}
                continue
            own = [b for b in module.buffers(recurse=False) if b.is_floating_point()]
            (lone if id(module) in synced_ids else every).extend(own)
    return every, lone


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's random stream in one epoch."""
    return torch_seed((seed * 1_000_003 + epoch) * 1009 + rank + 1)


@attrs.frozen(kw_only=True)
class DistributedConfig:
    # true: every rank gets the same number of samples each step (each global batch is cut to a
    # multiple of the process count; an epoch's last batch loses up to N - 1 samples), and DDP
    # averages with its own mean, no communication hook. false: exactly the batches of one process.
    even_shards: bool = False


class Distributed:
    default_enabled = True
    distributed_only = True  # it joins a stage only under --nproc N (N > 1): nothing to do alone
    config_class = DistributedConfig

    def __init__(self, config):
        self.config = config
        self.synced: list[torch.nn.Module] = []
        # floating-point buffers that can differ between ranks after a step: every step, and only
        # in a step whose samples one rank held alone (batch norm, normalised globally otherwise)
        self.every_step: list[torch.Tensor] = []
        self.lone_step: list[torch.Tensor] = []
        self.started = False
        self.decided = False  # whether DDP can average the student's gradients (see kdlab_backward)
        self.weight = [1.0]  # this step's share of the global batch, read by the DDP comm hook

    @hookimpl
    def kdlab_stage_start(self, stage):
        if self.config.even_shards:
            even = getattr(stage.data.train, "even_shards", None)
            if even is None:
                raise KdlabError(f"plugins.distributed.even_shards: the training loader of data set "
                                 f"'{stage.recipe.data.name}' cannot make even shards (it has no even_shards())")
            even()

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        if not self.started:  # once; the extra modules exist by now
            self.started = True
            for module in [*stage.student.modules(), *stage.extra.modules()]:
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.forward = _synced_forward(module, stage)
                    self.synced.append(module)
            self.every_step, self.lone_step = _differing_buffers([stage.student, stage.extra], self.synced)
        # Every rank starts from the same seed (identical initial weights); during training each
        # rank draws its own dropout masks and augmentation. Re-seeding at every epoch start, a
        # function of (seed, epoch, rank), keeps resume exact: checkpoints are taken between epochs.
        torch.manual_seed(rank_seed(stage.recipe.seed, epoch, stage.rank))

    @hookimpl(wrapper=True)
    def kdlab_backward(self, stage, loss):
        local = len(stage.batch.index)
        self.weight[0] = local / sum(stage.shard_sizes)
        result = yield
        # before clipping, unscaling and the step see the gradients
        if stage.data_parallel is not None and stage.data_parallel.used:  # DDP averaged the student's
            stage.data_parallel.used = False
            average_gradients([p for p in stage.extra.parameters() if p.requires_grad], local)
            return result
        average_gradients(stage.trainable_parameters(), local)
        if not self.decided and 0 not in stage.shard_sizes:
            # The first full step of the stage in this process decides: if every trainable
            # parameter of the student got a gradient on some rank (the same answer on every rank,
            # after the exchange), DDP takes over from the next step. If not -- a stage whose loss
            # reads only tapped features leaves the head without one -- the averaging stays by hand:
            # DDP cannot tell a parameter that feeds an output no loss reads from a used one, and
            # waits for its gradient forever (or, with static_graph, skips the reduction silently).
            self.decided = True
            student = [p for p in stage.student.parameters() if p.requires_grad]
            if student and all(p.grad is not None for p in student):
                stage.data_parallel = DataParallelStudent(stage.student, self.weight, stock=self.config.even_shards)
        return result

    @hookimpl(tryfirst=True)
    def kdlab_stage_end(self, stage):
        for module in self.synced:  # the plain modules again, before the export copies them
            del module.forward
        self.synced, self.started, self.decided, stage.data_parallel = [], False, False, None
        self.every_step, self.lone_step = [], []

    @hookimpl
    def kdlab_after_optimizer_step(self, stage):
        # only what can differ: every rank computed the same global statistics otherwise
        lone = sum(n > 0 for n in stage.shard_sizes) == 1
        broadcast_buffers(self.every_step + self.lone_step if lone else self.every_step)
