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
as in Hinton's KD). Averaged over the tokens whose target is >= 0 and over the teachers. A teacher
cache with ``topk`` feeds it top-k log-probabilities. Loss term: ``token_kd``; mix with ``lm``
through ``loss_weights``.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import Requirements, hookimpl
from kdlab.methods.lm import check_token_logits

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl"]


@attrs.frozen(kw_only=True)
class TokenKDConfig:
    divergence: Divergence = "forward_kl"
    temperature: float = field(default=1.0, validator=v.gt(0))
    beta: float = field(default=0.5, validator=[v.gt(0), v.lt(1)])  # jsd
    alpha: float = field(default=0.1, validator=[v.gt(0), v.lt(1)])  # skew_kl, skew_rkl


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension from log-probabilities (0 log 0 = 0)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _log_mix(w: float, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """log(w p + (1 - w) q), computed stably."""
    return torch.logaddexp(logp + math.log(w), logq + math.log(1 - w))


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, divergence: Divergence,
                     temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """Per-token divergence (..., vocab) -> (...), multiplied by temperature squared."""
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
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
    return d * temperature**2


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
                  divisor: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Mean of :func:`token_divergence` over the positions where ``mask`` is True (``divisor``
    replaces their count: :meth:`~kdlab.engine.types.Stage.mean_divisor`)."""
    d = token_divergence(student_logits, teacher_logits, **kwargs)
    return (d * mask).sum() / (mask.sum().clamp(min=1) if divisor is None else divisor)


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
        check_token_logits(student_out.logits, batch.targets, "methods.token_kd")
        mask = batch.targets >= 0
        divisor = stage.mean_divisor(mask)
        losses = [token_kd_loss(student_out.logits, t.logits, mask, divisor=divisor, divergence=cfg.divergence,
                                temperature=cfg.temperature, beta=cfg.beta, alpha=cfg.alpha) for t in teacher_outs]
        return {"token_kd": sum(losses) / len(losses)}
