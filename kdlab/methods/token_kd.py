"""Token-level distillation of language models with a chosen divergence between the teacher's
and the student's next-token distributions, on every valid target token:

* ``forward_kl``: KL(p_T || p_S), word-level KD (Kim and Rush 2016; Hinton et al. 2015);
* ``reverse_kl``: KL(p_S || p_T), the token-level form of MiniLLM (Gu et al. 2024), mode-seeking;
* ``jsd``: generalised Jensen-Shannon of GKD (Agarwal et al. 2024), with M = beta p_T + (1 - beta) p_S,
  beta KL(p_T || M) + (1 - beta) KL(p_S || M): near forward KL (scaled by beta) as beta -> 0, near
  reverse KL as beta -> 1;
* ``skew_kl``: KL(p_T || alpha p_T + (1 - alpha) p_S) and ``skew_rkl``: KL(p_S || alpha p_S +
  (1 - alpha) p_T), DistiLLM (Ko et al. 2024), bounded and stable early in training.

Both distributions are softened by ``temperature`` (the divergence is multiplied by its square,
as in Hinton's KD). Averaged over the tokens whose target is >= 0 and over the teachers. Loss
term: ``token_kd``; mix with ``lm`` through ``loss_weights``.

From a teacher cache with ``topk = k`` (sparse targets, :class:`kdlab.TopK`), every divergence is
computed over k + 1 buckets, never over the vocabulary: the teacher's k kept tokens and its
tail (the mass 1 - sum of the k), against the student's probabilities of the same k tokens and
the student's own mass outside them. This is the divergence between the two distributions
coarsened to those buckets, so it is exact in the kept tokens and never larger than the full
divergence (data processing); what it does not see is how each distributes its tail. Spreading
the tail evenly over the other V - k tokens instead (what kdlab did before) distils towards a
flattened teacher: on real text the top 32 hold about half the mass. ``topk_target =
"renormalized"`` drops the tail and compares the two distributions renormalised over the k
tokens (the choice of some offline-KD tools; it ignores how much mass the teacher leaves out).
Use the tail (the default) unless the student's mass outside the top k should not be pushed
down. With ``temperature`` != 1, the buckets are softened: the cache holds log-probabilities
at temperature 1, so the tail's shape at another temperature is unknown and the bucket is
softened as one token.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch.autograd.function import once_differentiable

from kdlab import ModelOutput, Requirements, TopK, hookimpl
from kdlab.methods.lm import check_token_logits
from kdlab.methods.vocab_chunks import RowsTerm, teacher_rows

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl"]


@attrs.frozen(kw_only=True)
class TokenKDConfig:
    divergence: Divergence = "forward_kl"
    temperature: float = field(default=1.0, validator=v.gt(0))
    beta: float = field(default=0.5, validator=[v.gt(0), v.lt(1)])  # jsd
    alpha: float = field(default=0.1, validator=[v.gt(0), v.lt(1)])  # skew_kl, skew_rkl
    # a top-k cache's targets: the k tokens and one tail bucket, or the k renormalised
    topk_target: Literal["tail", "renormalized"] = "tail"


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension from log-probabilities (0 log 0 = 0)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _log_mix(w: float, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """log(w p + (1 - w) q), computed stably."""
    return torch.logaddexp(logp + math.log(w), logq + math.log(1 - w))


class _ForwardKL(torch.autograd.Function):
    """KL(softmax(t) || softmax(s)) per row of (n, V) logits, with its gradient in closed form,
    softmax(s) - softmax(t), kept from the forward pass: autograd through log_softmax would make
    four more passes over the (n, V) chunk, and at a large vocabulary these passes, not the
    head's matmul, are most of a distillation step's time on a CPU."""

    @staticmethod
    def forward(ctx, s, t):
        log_s, log_t = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
        p_t = log_t.exp()
        kl = torch.linalg.vecdot(p_t, log_t - log_s)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(log_s.exp_().sub_(p_t))
        return kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        return diff * grad[:, None], None


class _BucketForwardKL(torch.autograd.Function):
    """Forward KL over the k + 1 buckets of a sparse target at temperature 1 (what
    :func:`bucket_logprobs` and ``forward_kl`` compute), per row of (n, V) student logits, with
    its gradient in closed form: autograd through the log-softmax, gather, scatter and
    log-sum-exp made about twice as many passes over the (n, V) chunk, most of a cached step's
    time at a small vocabulary. With bucket log-masses s_b = log sum_{j in b} p_j (p = softmax(z)),
    r = softmax(s), q the teacher's buckets: dKL/dz_j = p_j (r_b - q_b) / m_b - p_j A, b the
    bucket of j, m_b = exp(s_b), A = sum over the buckets with a gradient of (r_b - q_b); the
    tail's log-mass is floored like the teacher's, and a floored tail has no gradient."""

    @staticmethod
    def forward(ctx, z, index, t_k, t_tail):
        log_p = torch.log_softmax(z, -1)
        s_k = log_p.gather(-1, index)
        floor = math.log(TopK.TAIL_FLOOR)
        # the student's tail, log(1 - its top-k mass), from the k values: a scatter and a log-sum-exp
        # over the whole (n, V) chunk took about a tenth of a cached step. The top-k's log-mass is
        # rounded by about 1e-7, which moves a tail of mass m by about 1e-7 / m relative: rows whose
        # tail is under 1e-4 get the exact sum of their other tokens instead (few rows)
        tail = torch.log(-torch.expm1(s_k.logsumexp(-1, keepdim=True).clamp(max=0.0)))
        small = (tail < math.log(1e-4)).squeeze(-1)  # a mask over the rows (any leading shape)
        if bool(small.any()):
            tail[small] = log_p[small].scatter(-1, index[small], float("-inf")).logsumexp(-1, keepdim=True)
        live = tail > floor  # rows whose tail bucket has a gradient
        s = torch.cat([s_k, tail.clamp(min=floor)], -1)
        log_r, log_q = torch.log_softmax(s, -1), torch.log_softmax(torch.cat([t_k, t_tail[..., None]], -1), -1)
        q = log_q.exp()
        kl = torch.linalg.vecdot(q, log_q - log_r)
        if ctx.needs_input_grad[0]:
            diff = log_r.exp() - q  # (n, k + 1)
            coef = diff / s.exp()
            coef[..., -1:] = torch.where(live, coef[..., -1:], torch.zeros_like(coef[..., -1:]))
            a = diff[..., :-1].sum(-1, keepdim=True) + torch.where(live, diff[..., -1:], torch.zeros_like(diff[..., -1:]))
            p = log_p.exp_()
            grad = p * (coef[..., -1:] - a)  # every token as a tail token first
            grad.scatter_(-1, index, p.gather(-1, index) * (coef[..., :-1] - a))
            ctx.save_for_backward(grad)
        return kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        return g * grad[..., None], None, None, None


def _soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float()
    return logits if temperature == 1 else logits / temperature  # no copy of a (n, V) chunk at T = 1


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, divergence: Divergence,
                     temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """Per-token divergence (..., vocab) -> (...), multiplied by temperature squared."""
    if divergence == "forward_kl" and not teacher_logits.requires_grad:
        shape = student_logits.shape
        s = _soften(student_logits, temperature).reshape(-1, shape[-1])
        kl = _ForwardKL.apply(s, _soften(teacher_logits, temperature).reshape(-1, shape[-1]))
        return kl.reshape(shape[:-1]) * temperature**2
    s = torch.log_softmax(_soften(student_logits, temperature), dim=-1)
    t = torch.log_softmax(_soften(teacher_logits, temperature), dim=-1)
    return divergence_of(s, t, divergence=divergence, beta=beta, alpha=alpha) * temperature**2


def bucket_logprobs(student_logits: torch.Tensor, top, *, target: str = "tail",
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) log-probabilities over the k + 1 buckets of a sparse target ``top``
    (:class:`kdlab.TopK`): the k kept tokens and the tail, (..., k + 1); with ``target =
    "renormalized"``, over the k tokens alone, (..., k). Softened by ``temperature`` as buckets."""
    s_all = torch.log_softmax(student_logits.float(), dim=-1)
    index = top.index.long()
    s_k = s_all.gather(-1, index)
    t_k = top.values.float()
    if target == "renormalized":
        s, t = s_k, t_k
    else:
        # the student's mass outside the teacher's k tokens, summed exactly over the other V - k
        # (floored like the teacher's tail, so that k = V gives an empty bucket, not NaN)
        s_tail = s_all.scatter(-1, index, float("-inf")).logsumexp(-1, keepdim=True).clamp(min=math.log(top.TAIL_FLOOR))
        s, t = torch.cat([s_k, s_tail], -1), torch.cat([t_k, top.tail()[..., None]], -1)
    return torch.log_softmax(s / temperature, -1), torch.log_softmax(t / temperature, -1)


def divergence_of(s: torch.Tensor, t: torch.Tensor, *, divergence: Divergence, beta: float = 0.5,
                  alpha: float = 0.1) -> torch.Tensor:
    """The divergence between student and teacher log-probabilities ``s`` and ``t`` (..., n)."""
    if divergence == "forward_kl":
        d = _kl(t, s)
    elif divergence == "reverse_kl":
        d = _kl(s, t)
    elif divergence == "jsd":
        m = _log_mix(beta, t, s)
        d = beta * _kl(t, m) + (1 - beta) * _kl(s, m)
    elif divergence == "skew_kl":
        d = _kl(t, _log_mix(alpha, t, s))
    elif divergence == "skew_rkl":
        d = _kl(s, _log_mix(alpha, s, t))
    else:
        raise ValueError(f"unknown divergence {divergence!r}")
    return d


def token_kd_term(student: ModelOutput, teachers: list, mask: torch.Tensor, *, divisor: torch.Tensor | None = None,
                  divergence: Divergence = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                  alpha: float = 0.1, topk_target: str = "tail", chunk: int | None = None,
                  defer: bool = False) -> torch.Tensor:
    """The mean over ``teachers`` and over the positions where ``mask`` is True of
    :func:`token_divergence` (``divisor`` replaces their count:
    :meth:`~kdlab.engine.types.Stage.mean_divisor`). ``student``: its output, whose hidden
    states (a language model that splits its head) are taken in chunks of positions
    (:mod:`kdlab.methods.vocab_chunks`). ``teachers``: their outputs (or logits); a sparse
    ``topk`` (from a cache) is used as k + 1 buckets (:func:`bucket_logprobs`), not expanded.
    ``defer``: return it as a :class:`~kdlab.methods.vocab_chunks.RowsTerm` (for ``kdlab_loss_terms``)."""
    teachers = [t if isinstance(t, ModelOutput) else ModelOutput(logits=t) for t in teachers]
    div = {"divergence": divergence, "beta": beta, "alpha": alpha}

    def per_token(logits, rows):
        total = 0.0
        for teacher in teachers:
            target = teacher_rows(teacher, rows)
            if isinstance(target, TopK) and divergence == "forward_kl" and topk_target == "tail" and temperature == 1:
                total = total + _BucketForwardKL.apply(logits.float(), target.index.long(), target.values.float(),
                                                       target.tail())
            elif isinstance(target, TopK):
                s, t = bucket_logprobs(logits, target, target=topk_target, temperature=temperature)
                total = total + divergence_of(s, t, **div) * temperature**2
            else:
                total = total + token_divergence(logits, target, temperature=temperature, **div)
        return total / len(teachers)

    term = RowsTerm(student, mask, per_token, divisor, chunk)
    return term if defer else term.value()


def token_kd_loss(student_logits: torch.Tensor | ModelOutput, teacher, mask: torch.Tensor, **kwargs) -> torch.Tensor:
    """:func:`token_kd_term` with one teacher (its logits or output)."""
    student = student_logits if isinstance(student_logits, ModelOutput) else ModelOutput(logits=student_logits)
    return token_kd_term(student, [teacher], mask, **kwargs)


class TokenKD:
    data_kinds = {"text"}  # kdlab validate refuses it on other data
    config_class = TokenKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"token_kd"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        check_token_logits(student_out, batch.targets, "methods.token_kd")
        mask = batch.targets >= 0
        return {"token_kd": token_kd_term(student_out, teacher_outs, mask, divisor=stage.mean_divisor(mask),
                                          divergence=cfg.divergence, temperature=cfg.temperature, beta=cfg.beta,
                                          alpha=cfg.alpha, topk_target=cfg.topk_target, defer=True)}
