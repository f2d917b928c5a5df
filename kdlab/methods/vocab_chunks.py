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

import attrs
import torch
from torch.autograd.function import once_differentiable

from kdlab import DeferredTerm, ModelOutput, TopK

# float32 logits per chunk; 32 MiB: 55 tokens at a vocabulary of 151,936, 4,194 at 2,000. On the
# development CPU a step of lm + token_kd at 151,936 took 9.6 s at 32 MiB, 13 s at 16 and at 64,
# 11-12 s at 128 (the chunk's passes stay in the cache); see BENCHMARKS.md
CHUNK_BYTES = 32 << 20

PerToken = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (chunk logits, rows) -> (chunk,) losses


def chunk_rows(vocab: int, budget: int | None = None) -> int:
    """Tokens per chunk for a vocabulary, so that a chunk's float32 logits fit ``budget`` bytes
    (default :data:`CHUNK_BYTES`)."""
    return max(16, (CHUNK_BYTES if budget is None else budget) // (4 * vocab))


class _ChunkedLoss(torch.autograd.Function):
    """sum_i coefs[i] * sum over rows of per_tokens[i](chunk logits, chunk rows), and the n sums
    themselves (not differentiable), one head matmul per chunk for all n functions."""

    @staticmethod
    def forward(ctx, hidden, weight, rows, per_tokens, coefs, chunk):
        sums = torch.zeros(len(per_tokens), dtype=torch.float32, device=hidden.device)
        need = (hidden.requires_grad, weight.requires_grad)
        grad_hidden = torch.zeros_like(hidden) if need[0] else None
        w = weight.detach().requires_grad_(need[1])  # its .grad sums over the chunks
        with torch.enable_grad():
            for start in range(0, len(rows), chunk):
                h = hidden[start: start + chunk].detach().requires_grad_(need[0])
                logits, part = h @ w.t(), rows[start: start + chunk]
                values = torch.stack([fn(logits, part).sum().float() for fn in per_tokens])
                if any(need):
                    (values * coefs).sum().backward()
                    if need[0]:
                        grad_hidden[start: start + chunk] = h.grad
                sums += values.detach()
        ctx.mark_non_differentiable(sums)
        ctx.save_for_backward(grad_hidden if need[0] else None, w.grad if need[1] else None)
        return (sums * coefs).sum(), sums

    @staticmethod
    @once_differentiable  # its gradients were computed in the forward pass
    def backward(ctx, grad_out, _grad_sums):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_out,
                None if grad_weight is None else grad_weight * grad_out, None, None, None, None)


def chunked_loss(hidden: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, per_token: PerToken,
                 chunk: int | None = None) -> torch.Tensor:
    """``per_token(hidden @ weight.T, rows).sum()`` over (n, H) ``hidden`` and (V, H) ``weight``,
    ``chunk`` rows at a time (default :func:`chunk_rows`); differentiable in both."""
    one = torch.ones(1, dtype=torch.float32, device=hidden.device)
    return _ChunkedLoss.apply(hidden, weight, rows, (per_token,), one, chunk or chunk_rows(weight.shape[0]))[0]


def rows_loss(out: ModelOutput, mask: torch.Tensor, per_token: PerToken, divisor: torch.Tensor | None = None,
              chunk: int | None = None) -> torch.Tensor:
    """The mean of ``per_token`` over the positions where ``mask`` (batch, length) is True:
    ``per_token(logits, rows)`` gets the student's logits of some of those positions and their
    indices ``rows`` into the flattened (batch x length) positions. In chunks when ``out``
    carries hidden states; ``divisor`` replaces the count (``stage.mean_divisor``). A method's
    ``kdlab_loss_terms`` returns :class:`RowsTerm` instead, so that the step's vocabulary losses
    share one pass."""
    return RowsTerm(out, mask, per_token, divisor, chunk).value()


@attrs.frozen(eq=False)
class RowsTerm(DeferredTerm):
    """:func:`rows_loss`, deferred: what a method's ``kdlab_loss_terms`` returns for a
    vocabulary loss. The core evaluates all of a step's ``RowsTerm`` of one student output and
    one mask together (:meth:`evaluate`): each chunk's logits are formed once, for all of them
    (with ``lm`` and ``token_kd`` in one recipe, the student's head runs once, not twice)."""

    out: ModelOutput
    mask: torch.Tensor
    per_token: PerToken
    divisor: torch.Tensor | None = None
    chunk: int | None = None

    def group_key(self):
        source = self.out.hidden.hidden if self.out.hidden is not None else self.out.logits
        return id(source), self.chunk

    def value(self) -> torch.Tensor:
        return self.evaluate([self], [1.0])[0]

    @classmethod
    def evaluate(cls, terms, weights):
        loss, values, first = None, [None] * len(terms), terms[0]
        # one pass per distinct mask (in practice one: every method masks the targets >= 0)
        passes: list[list[int]] = []
        for i, term in enumerate(terms):
            same = next((p for p in passes if terms[p[0]].mask is term.mask
                         or torch.equal(terms[p[0]].mask, term.mask)), None)
            (same.append(i) if same is not None else passes.append([i]))
        for members in passes:
            mask = terms[members[0]].mask
            rows = mask.flatten().nonzero().squeeze(1)
            divisors = [mask.sum().clamp(min=1) if terms[i].divisor is None else terms[i].divisor for i in members]
            part, sums = _rows_pass(first.out, rows, [terms[i].per_token for i in members],
                                    [weights[i] for i in members], divisors, first.chunk)
            loss = part if loss is None else loss + part
            for j, i in enumerate(members):
                values[i] = sums[j].detach() / divisors[j]
        return loss, values


def _rows_pass(out, rows, per_tokens, weights, divisors, chunk):
    """-> (sum_i weights[i] * sum of per_tokens[i] over ``rows`` / divisors[i]; the n sums)."""
    if out.hidden is not None:
        hidden, weight = out.hidden
        flat = hidden.flatten(0, 1)
        if len(rows) == 0:  # zero, with a gradient path
            return (flat.sum() + weight.sum()) * 0.0, torch.zeros(len(per_tokens), device=flat.device)
        coefs = torch.stack([torch.as_tensor(w, dtype=torch.float32, device=flat.device) / d
                             for w, d in zip(weights, divisors)]).float()
        return _ChunkedLoss.apply(flat[rows], weight, rows, tuple(per_tokens), coefs,
                                  chunk or chunk_rows(weight.shape[0]))
    logits = out.logits.flatten(0, 1)
    if len(rows) == 0:
        return logits.sum() * 0.0, torch.zeros(len(per_tokens), device=logits.device)
    chosen = logits[rows]
    sums = torch.stack([fn(chosen, rows).sum().float() for fn in per_tokens])
    loss = sum(w * s / d for w, s, d in zip(weights, sums, divisors))
    return loss, sums


def teacher_rows(teacher: ModelOutput, rows: torch.Tensor) -> torch.Tensor | TopK:
    """A teacher's output at the flattened positions ``rows``: its logits, or its sparse
    :class:`~kdlab.TopK` target, never the whole batch's logits."""
    if teacher.topk is not None:
        top = teacher.topk
        return TopK(top.values.flatten(0, 1)[rows], top.index.flatten(0, 1)[rows], top.num_classes)
    if teacher.hidden is not None and teacher._logits is None:
        hidden, weight = teacher.hidden
        # a teacher's head weight requires grad, but a target that does not come from a graph
        # (its forward ran without one) must not make one: the head's backward would run for nothing
        with torch.set_grad_enabled(hidden.requires_grad):
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


def topk_logprobs(out: ModelOutput, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest log-probabilities of every position of ``out`` and their indices,
    (..., k) each; from hidden states a chunk of rows at a time (no gradient: for caches)."""
    if out.hidden is None:
        logits = out.logits
        return torch.log_softmax(logits.float(), -1).topk(min(k, logits.shape[-1]), -1)
    hidden, weight = out.hidden
    flat, k = hidden.flatten(0, -2), min(k, weight.shape[0])
    values, index = [], []
    with torch.no_grad():
        for start in range(0, len(flat), chunk_rows(weight.shape[0])):
            part = torch.log_softmax((flat[start: start + chunk_rows(weight.shape[0])] @ weight.t()).float(), -1)
            v, i = part.topk(k, -1)
            values.append(v)
            index.append(i)
    shape = (*hidden.shape[:-1], k)
    return torch.cat(values).reshape(shape), torch.cat(index).reshape(shape)

