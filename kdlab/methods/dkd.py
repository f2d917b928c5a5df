"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu, Liang 2022, "Decoupled Knowledge
Distillation", CVPR, arXiv:2203.08679).

The KD loss splits into a target-class term (TCKD: the binary distribution "target class or
not") and a non-target term (NCKD: the distribution over the other classes), weighted apart:

    p = softmax(z / T);  b = [p_y, 1 - p_y];  p_hat = softmax over the classes other than y
    TCKD = T^2 * KL(b_teacher || b_student)
    NCKD = T^2 * KL(p_hat_teacher || p_hat_student)
    loss = warmup * (alpha * TCKD + beta * NCKD),  warmup = min(epoch / warmup_epochs, 1)

Averaged over the batch; with several teachers, over the teachers. Defaults are the published
CIFAR-100 settings (alpha 1, beta 8, T 4, 20 warm-up epochs; the warm-up ramps linearly in the
epoch index, counting from 1, as in the authors' code, which ramps per epoch as well). Loss term
``dkd``; the hard-label term comes from ``supervised`` (or ``logit_kd``), so DKD composes with
other methods. ``standardize``: logit standardisation (see ``logit_kd``).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import Requirements, hookimpl
from kdlab.methods.logit_kd import logits_of


@attrs.frozen(kw_only=True)
class DKDConfig:
    alpha: float = field(default=1.0, validator=v.ge(0))  # weight of TCKD
    beta: float = field(default=8.0, validator=v.ge(0))  # weight of NCKD
    temperature: float = field(default=4.0, validator=v.gt(0))
    warmup_epochs: int = field(default=20, validator=v.ge(0))
    standardize: bool = False


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2 * KL(teacher || student) averaged over the batch."""
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    gt = F.one_hot(targets, s.shape[-1]).bool()
    # the binary [p_y, rest] in log space, the rest as the log-sum of the other classes'
    # probabilities (as the authors' code sums them): 1 - p_y by subtraction rounds to 0 once
    # p_y rounds to 1 in float32 (a margin of about 17 after the temperature) and the gradient vanished
    def binary(z):
        log_p = F.log_softmax(z, dim=-1)
        return torch.stack([log_p[gt], log_p.masked_fill(gt, float("-inf")).logsumexp(-1)], dim=1)

    log_b_s, log_b_t = binary(s), binary(t)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True)
    # the target class is removed by a large negative logit, as in the authors' code
    log_hat_s = F.log_softmax(s.masked_fill(gt, -1000.0), dim=-1)
    hat_t = F.softmax(t.masked_fill(gt, -1000.0), dim=-1)
    nckd = F.kl_div(log_hat_s, hat_t, reduction="batchmean")
    return tckd * temperature**2, nckd * temperature**2


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min((epoch + 1) / warmup_epochs, 1) for a 0-based epoch; 1 without warm-up."""
    return 1.0 if warmup_epochs == 0 else min((epoch + 1) / warmup_epochs, 1.0)


class DKD:
    config_class = DKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"dkd"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        norm = logits_of(cfg)
        total = 0.0
        for t in teacher_outs:
            tckd, nckd = dkd_terms(norm(student_out.logits), norm(t.logits), batch.targets,
                                   temperature=cfg.temperature)
            total = total + cfg.alpha * tckd + cfg.beta * nckd
        return {"dkd": warmup_factor(stage.epoch, cfg.warmup_epochs) * total / len(teacher_outs)}
