"""``global_batch_norm`` on its own: ranks holding 1 + 1 and 2 + 1 samples of a batch compute what
one process computes on the whole batch (output, gradients, running statistics). The end-to-end
2-vs-1 training tests are in tests/engine/test_distributed.py; these pin the smallest shares,
where a one-sample rank's own statistics would be degenerate."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
import torch.distributed as dist

from kdlab.infra.distributed import global_batch_norm


def _inputs(shape):
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g) * 3 + 1, torch.randn(*shape, generator=g)


def _layer(kind, channels):
    torch.manual_seed(1)
    bn = kind(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    return bn.train()


def _loss(y, w):
    return ((y * w) ** 2).mean(0).sum()  # a mean over the samples, as the training losses are


def _rank(rank, sizes, shape, kind, init, queue):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=len(sizes))
    try:
        x, w = _inputs(shape)
        start, n, total = sum(sizes[:rank]), sizes[rank], sum(sizes)
        bn = _layer(kind, shape[1])
        mine = x[start : start + n].clone().requires_grad_()
        y = global_batch_norm(bn, mine, n)
        _loss(y, w[start : start + n]).backward()
        # the distributed plugin's averaging: each rank's gradient weighted by its share
        grads = torch.cat([bn.weight.grad, bn.bias.grad]) * n / total
        dist.all_reduce(grads)
        queue.put((rank, y.detach(), mine.grad * n / total, grads, bn.running_mean.clone(), bn.running_var.clone()))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("shape, kind", [((2, 3), torch.nn.BatchNorm1d), ((3, 3), torch.nn.BatchNorm1d),
                                         ((2, 3, 4, 4), torch.nn.BatchNorm2d), ((3, 3, 2, 2), torch.nn.BatchNorm2d)])
def test_one_sample_shares_normalise_with_the_global_batch(shape, kind, tmp_path):
    sizes = [shape[0] - shape[0] // 2, shape[0] // 2]  # 1 + 1 or 2 + 1
    x, w = _inputs(shape)
    bn = _layer(kind, shape[1])
    x = x.clone().requires_grad_()
    y = bn(x)
    _loss(y, w).backward()

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'store'}"
    workers = [ctx.Process(target=_rank, args=(r, sizes, shape, kind, init, queue)) for r in range(2)]
    for p in workers:
        p.start()
    results = sorted((queue.get(timeout=60) for _ in workers), key=lambda r: r[0])
    for p in workers:
        p.join(timeout=60)
        assert p.exitcode == 0
    scale = float(x.grad.abs().max())
    assert torch.allclose(torch.cat([r[1] for r in results]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([r[2] for r in results]), x.grad, atol=1e-5 * max(scale, 1.0))  # with 2 samples the true gradient is 0: noise
    for _, _, _, grads, mean, var in results:
        assert torch.allclose(grads, torch.cat([bn.weight.grad, bn.bias.grad]), atol=1e-4)
        assert torch.allclose(mean, bn.running_mean, atol=1e-6) and torch.allclose(var, bn.running_var, atol=1e-6)
