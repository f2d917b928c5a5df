"""Logit distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531).

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

The KL is averaged over the batch; T^2 keeps the gradient scale independent of T. With several
teachers the KD term is the mean over teachers. Loss terms: ``kd`` (already multiplied by alpha)
and ``ce`` (multiplied by 1 - alpha, left out when alpha = 1). ``kd_weight`` and ``ce_weight``
replace alpha where a paper publishes the two weights apart (logit standardisation's CIFAR-100
setting: ``temperature = 2, kd_weight = 9, ce_weight = 0.1``, which no alpha in [0, 1] gives).
Because this method supplies the hard-label term itself, do not enable ``supervised`` in the same
stage.

``standardize = true``: logit standardisation (Sun et al. 2024, "Logit Standardization in
Knowledge Distillation", arXiv:2403.01427): each sample's student and teacher logits are z-scored
(minus their mean, over their standard deviation) before the temperature, so the student matches
the teacher's logit *relations* rather than their scale. An option of every logit method
(``logit_kd``, ``dkd``, ``dist``).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import Requirements, hookimpl


@attrs.frozen(kw_only=True)
class LogitKDConfig:
    temperature: float = field(default=4.0, validator=v.gt(0))
    alpha: float = field(default=0.9, validator=[v.ge(0), v.le(1)])
    standardize: bool = False
    # separate weights, as papers that publish them use (logit standardisation's CIFAR-100 KD:
    # kd_weight 9, ce_weight 0.1, T 2): set either and they replace alpha (the other then 1)
    kd_weight: float | None = field(default=None, validator=v.optional(v.ge(0)))
    ce_weight: float | None = field(default=None, validator=v.optional(v.ge(0)))

    def weights(self) -> tuple[float, float]:
        """(KD weight, CE weight)."""
        if self.kd_weight is None and self.ce_weight is None:
            return self.alpha, 1 - self.alpha
        return (1.0 if self.kd_weight is None else self.kd_weight), (1.0 if self.ce_weight is None else self.ce_weight)


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row z-scored: (z - mean) / (std + eps), the std with Bessel's correction as in the
    paper's code."""
    logits = logits.float()
    return (logits - logits.mean(dim=-1, keepdim=True)) / (logits.std(dim=-1, keepdim=True) + eps)


def logits_of(cfg):
    """What a logit method compares: standardised logits with ``standardize``, else as they are."""
    return standardize if cfg.standardize else (lambda z: z)


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the batch."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class LogitKD:
    config_class = LogitKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"kd", "ce"} if config.weights()[1] > 0 else {"kd"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        norm = logits_of(cfg)
        kd = sum(hinton_kd_loss(norm(student_out.logits), norm(t.logits), temperature=cfg.temperature)
                 for t in teacher_outs)
        kd_weight, ce_weight = cfg.weights()
        terms = {"kd": kd_weight * kd / len(teacher_outs)}
        if ce_weight > 0:
            terms["ce"] = ce_weight * F.cross_entropy(student_out.logits, batch.targets)
        return terms
