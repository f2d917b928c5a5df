"""Vocabulary losses a chunk of tokens at a time, from a language model's final hidden states
and its LM head (:class:`kdlab.HiddenStates`), so that no (tokens x vocabulary) logits are held
for a whole batch: at a vocabulary of 151,936 and 4,096 tokens a batch, one float32 copy of the
logits is 2.5 GB, and a token divergence keeps several (both models' logits and
log-probabilities, their gradient).

:func:`chunked_loss` computes ``sum over the selected tokens of per_token(logits of a chunk)``
as one autograd function: in its forward pass, for each chunk of rows it forms the chunk's
logits, runs ``per_token`` with autograd on them, and back-propagates at once into the chunk's
hidden states and the head's weight, keeping only those gradients (the design of Liger-Kernel's
fused linear cross-entropy: Hsu et al. 2024, arXiv:2410.10989). The backward pass then scales
them. The arithmetic is that of the unchunked loss; only the order of the sums differs. It is
written here because torch has no chunked linear-plus-loss, and Liger-Kernel's fused kernels
run on GPUs only and cover cross-entropy and JSD, not kdlab's top-k buckets.

A method uses it through :func:`rows_loss`: the valid target positions, a function of a chunk's
student logits and its row indices (to pick the targets and the teachers' rows of the same
positions, :func:`teacher_rows`), and the divisor. Without hidden states (a model that does not
split its head) the same function runs once on all the rows' logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from kdlab import ModelOutput, TopK

# float32 logits per chunk; 128 MiB: 220 tokens at a vocabulary of 151,936, all of a batch at 2,000
CHUNK_BYTES = 128 << 20

PerToken = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (chunk logits, rows) -> (chunk,) losses


def chunk_rows(vocab: int, budget: int | None = None) -> int:
    """Tokens per chunk for a vocabulary, so that a chunk's float32 logits fit ``budget`` bytes
    (default :data:`CHUNK_BYTES`)."""
    return max(16, (CHUNK_BYTES if budget is None else budget) // (4 * vocab))


class _ChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, rows, per_token, chunk):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        need = (hidden.requires_grad, weight.requires_grad)
        grad_hidden = torch.zeros_like(hidden) if need[0] else None
        w = weight.detach().requires_grad_(need[1])  # its .grad sums over the chunks
        with torch.enable_grad():
            for start in range(0, len(rows), chunk):
                h = hidden[start: start + chunk].detach().requires_grad_(need[0])
                loss = per_token(h @ w.t(), rows[start: start + chunk]).sum()
                if any(need):
                    loss.backward()
                    if need[0]:
                        grad_hidden[start: start + chunk] = h.grad
                total += loss.detach().float()
        ctx.save_for_backward(grad_hidden if need[0] else None, w.grad if need[1] else None)
        return total

    @staticmethod
    @once_differentiable  # its gradients were computed in the forward pass
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_out,
                None if grad_weight is None else grad_weight * grad_out, None, None, None)


def chunked_loss(hidden: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, per_token: PerToken,
                 chunk: int | None = None) -> torch.Tensor:
    """``per_token(hidden @ weight.T, rows).sum()`` over (n, H) ``hidden`` and (V, H) ``weight``,
    ``chunk`` rows at a time (default :func:`chunk_rows`); differentiable in both."""
    return _ChunkedLoss.apply(hidden, weight, rows, per_token, chunk or chunk_rows(weight.shape[0]))


def rows_loss(out: ModelOutput, mask: torch.Tensor, per_token: PerToken, divisor: torch.Tensor | None = None,
              chunk: int | None = None) -> torch.Tensor:
    """The mean of ``per_token`` over the positions where ``mask`` (batch, length) is True:
    ``per_token(logits, rows)`` gets the student's logits of some of those positions and their
    indices ``rows`` into the flattened (batch x length) positions. In chunks when ``out``
    carries hidden states; ``divisor`` replaces the count (``stage.mean_divisor``)."""
    rows = mask.flatten().nonzero().squeeze(1)
    divisor = mask.sum().clamp(min=1) if divisor is None else divisor
    if out.hidden is not None:
        hidden, weight = out.hidden
        flat = hidden.flatten(0, 1)
        if len(rows) == 0:
            return (flat.sum() + weight.sum()) * 0.0  # zero, with a gradient path
        return chunked_loss(flat[rows], weight, rows, per_token, chunk) / divisor
    logits = out.logits.flatten(0, 1)
    if len(rows) == 0:
        return logits.sum() * 0.0
    return per_token(logits[rows], rows).sum() / divisor


def teacher_rows(teacher: ModelOutput, rows: torch.Tensor) -> torch.Tensor | TopK:
    """A teacher's output at the flattened positions ``rows``: its logits, or its sparse
    :class:`~kdlab.TopK` target, never the whole batch's logits."""
    if teacher.topk is not None:
        top = teacher.topk
        return TopK(top.values.flatten(0, 1)[rows], top.index.flatten(0, 1)[rows], top.num_classes)
    if teacher.hidden is not None and teacher._logits is None:
        hidden, weight = teacher.hidden
        return hidden.flatten(0, 1)[rows] @ weight.t()
    return teacher.logits.flatten(0, 1)[rows]


def map_rows(out: ModelOutput, rows: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             chunk: int | None = None) -> torch.Tensor:
    """``fn(logits, rows)`` over chunks of ``rows``, summed (no gradient: for metrics)."""
    total = None
    step = chunk or chunk_rows(out.hidden.weight.shape[0] if out.hidden is not None else out.logits.shape[-1])
    for start in range(0, len(rows), step):
        part = rows[start: start + step]
        value = fn(teacher_rows(out, part), part)
        total = value if total is None else total + value
    return total
