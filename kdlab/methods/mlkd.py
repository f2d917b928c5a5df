"""Multi-level logit distillation (Jin, Wang, Lin 2023, "Multi-Level Logit Distillation", CVPR).

The student's predictions are aligned with the teacher's at three levels, each at several
temperatures ("prediction augmentation"), T in {4, 3, 5, 2, 6}:

    instance:  kd(T)  = T^2 * mean_i KL(p_t,i || p_s,i)                    (as logit_kd)
    batch:     bc(T)  = sum (P_s P_s^T - P_t P_t^T)^2 / N                   (N x N sample affinities)
    class:     cc(T)  = sum (P_s^T P_s - P_t^T P_t)^2 / C                   (C x C class affinities)

with P = softmax(z / T) (batch x classes). The authors' code (Jin-Ying/Multi-Level-Logit-
Distillation, mdistiller/distillers/KD_ours.py, at 5ee473f) weights each level by the fraction
of the batch whose teacher confidence max_c p_t is at most its median (for kd and bc), or of the
classes whose summed teacher probability is at most its median (for cc): it multiplies the
batch-level loss by a boolean mask and takes the mean, so the mask acts as that fraction, not
per sample. kdlab keeps this exactly (checked against that code, values and gradients:
benchmarks/parity_peers.py, tests/methods/test_peer_parity.py). With its weight w = 0.9 (the
code's KD weight; CE weight 0.1):

    loss = w * [ (1 + f) sum_T kd(T)  +  f_c sum_T cc(T)  +  f sum_T bc(T) ]

The authors feed a weakly augmented view and a strongly augmented one (RandAugment(2, 10)) of
every image; their code's "strong" kd sum is unmasked. kdlab has one view per batch, so the
batch is both views (the ``1 + f``): the strong view is not built. Under ``--nproc`` the batch-
and class-level terms and the medians use the whole global batch (``stage.gather``). Loss term
``mlkd``; the hard-label term comes from ``supervised`` (the authors' CE weight, 0.1, applies to
each of their two views). With several teachers, the mean over them.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import Requirements, hookimpl


def _positive_temperatures(_inst, attr, value):
    if not value or any(t <= 0 for t in value):
        raise ValueError(f"must be a non-empty list of positive temperatures, got {list(value)}")


@attrs.frozen(kw_only=True)
class MLKDConfig:
    temperatures: tuple[float, ...] = field(default=(4.0, 3.0, 5.0, 2.0, 6.0), validator=_positive_temperatures)
    weight: float = field(default=0.9, validator=v.ge(0))  # the code's KD_WEIGHT (mdistiller cfg default)


def _kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p_s = F.log_softmax(s / temperature, dim=1)
    p_t = F.softmax(t / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean() * temperature**2


def _affinity_gap(s: torch.Tensor, t: torch.Tensor, temperature: float, classes: bool) -> torch.Tensor:
    p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
    if classes:  # C x C
        gap = p_t.t() @ p_t - p_s.t() @ p_s
        return gap.pow(2).sum() / s.shape[1]
    gap = p_t @ p_t.t() - p_s @ p_s.t()  # N x N
    return gap.pow(2).sum() / s.shape[0]


def mlkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
              temperatures: tuple[float, ...] = (4.0, 3.0, 5.0, 2.0, 6.0), weight: float = 0.9) -> torch.Tensor:
    s, t = student_logits.float(), teacher_logits.detach().float()
    p_t = F.softmax(t, dim=1)
    confidence = p_t.max(dim=1).values
    # torch.quantile interpolates linearly, as numpy.percentile (the authors' code) does
    low_confidence = (confidence <= torch.quantile(confidence, 0.5)).float().mean()
    class_mass = p_t.sum(0)
    low_mass = (class_mass <= torch.quantile(class_mass, 0.5)).float().mean()
    kd = sum(_kd(s, t, temp) for temp in temperatures)
    cc = sum(_affinity_gap(s, t, temp, classes=True) for temp in temperatures)
    bc = sum(_affinity_gap(s, t, temp, classes=False) for temp in temperatures)
    return weight * ((1 + low_confidence) * kd + low_mass * cc + low_confidence * bc)


class MLKD:
    config_class = MLKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"mlkd"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        s = stage.gather(student_out.logits)
        loss = sum(mlkd_loss(s, stage.gather(t.logits), temperatures=cfg.temperatures, weight=cfg.weight)
                   for t in teacher_outs)
        return {"mlkd": loss / len(teacher_outs)}
