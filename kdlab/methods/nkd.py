"""Normalized knowledge distillation (Yang, Zeng, Zhang, Li, Li 2023, "From Knowledge
Distillation to Self-Knowledge Distillation: A Unified Approach with Normalized Loss and
Customized Soft Labels", ICCV, arXiv:2303.13005).

The KD loss splits into the target class and the non-target classes; the non-target part is
normalised (a distribution over the other classes alone, so its scale does not depend on how
confident the teacher is on the target):

    loss_t   = - mean_i  p^t_y * log p^s_y                                  (T = 1)
    loss_non = - gamma * T^2 * mean_i sum_{c != y} q^t_c log q^s_c,   q = softmax over c != y of z / T
    loss     = loss_t + loss_non

``p^t_y`` is the teacher's probability of the label (no gradient). Defaults as the authors'
code (yzd-v/cls_KD, mmcls/models/dis_losses/nkd.py: temp 1, gamma 1.5); checked against it on
the same logits (values and gradients: benchmarks/parity_peers.py, tests/methods/test_peer_parity.py).
Loss term ``nkd``; the hard-label term comes from ``supervised``. With several teachers, the
mean over them.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import Requirements, hookimpl


@attrs.frozen(kw_only=True)
class NKDConfig:
    temperature: float = field(default=1.0, validator=v.gt(0))  # of the non-target term
    gamma: float = field(default=1.5, validator=v.ge(0))  # weight of the non-target term


def nkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
             temperature: float = 1.0, gamma: float = 1.5) -> torch.Tensor:
    s, t = student_logits.float(), teacher_logits.float()
    label = targets.view(-1, 1)
    target_term = -(F.softmax(t, dim=1).gather(1, label).detach() * F.log_softmax(s, dim=1).gather(1, label)).mean()
    # the other classes only: the label's logit removed (-inf drops it from both softmaxes)
    gt = F.one_hot(targets, s.shape[1]).bool()
    log_q_s = F.log_softmax((s / temperature).masked_fill(gt, float("-inf")), dim=1)
    q_t = F.softmax((t / temperature).masked_fill(gt, float("-inf")), dim=1)
    non_target = -(q_t * log_q_s.masked_fill(gt, 0.0)).sum(1).mean()
    return target_term + gamma * temperature**2 * non_target


class NKD:
    config_class = NKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"nkd"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        loss = sum(nkd_loss(student_out.logits, t.logits, batch.targets, temperature=cfg.temperature, gamma=cfg.gamma)
                   for t in teacher_outs)
        return {"nkd": loss / len(teacher_outs)}
