"""Universal self-knowledge distillation (Yang, Zeng, Zhang, Li, Li 2023, "From Knowledge
Distillation to Self-Knowledge Distillation: A Unified Approach with Normalized Loss and
Customized Soft Labels", ICCV, arXiv:2303.13005): NKD's normalised loss without a teacher.

The student makes its own soft labels. Target: its probability of the label, squared and
shifted by the batch mean, p = s_y^2 + 1 - mean_batch(s_y^2). Non-target: a Zipf distribution
(1 / rank) over the other classes, ranked by the student's final logits together with a weak
classifier (a linear layer, trained here, on a mid-level feature) trained with label smoothing:

    loss = alpha * -mean p log s_y + beta * -mean sum_{c != y} zipf_c log q_c + mu * CE_ls(weak)

(q: softmax of the final logits over the non-target classes). As the authors' code exactly
(yzd-v/cls_KD, mmcls/models/dis_losses/uskd.py; checked against it, values and gradients,
benchmarks/parity_peers.py): alpha 1, beta 0.1, mu 0.005, smoothing 0.1; its ranking score adds
the weak classifier's normalised probabilities to the final logits' normalised
*log*-probabilities (the variable is reused after a log-softmax), and so does kdlab, so that
the soft labels are the published ones. Hard labels only. ``student``: the tap alias of the
mid-level feature (a map is averaged over positions). No teacher. The weak classifier is not
exported. Loss term ``uskd``; add ``supervised`` for the cross-entropy of the final logits.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import Requirements, hookimpl
from kdlab.methods.feature_pairs import as_vector

NAME = "uskd"


@attrs.frozen(kw_only=True)
class USKDConfig:
    student: str = "feat"  # the mid-level feature's tap alias
    alpha: float = field(default=1.0, validator=v.ge(0))  # target term
    beta: float = field(default=0.1, validator=v.ge(0))  # non-target term
    mu: float = field(default=0.005, validator=v.ge(0))  # weak classifier's cross-entropy


def uskd_loss(feature: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, weak: nn.Module, *,
              alpha: float = 1.0, beta: float = 0.1, mu: float = 0.005) -> torch.Tensor:
    logits = logits.float()
    n, c = logits.shape
    label = targets.view(-1, 1)
    log_s = F.log_softmax(logits, dim=1)
    s_y = log_s.gather(1, label).exp()
    p = (s_y.pow(2) + 1 - s_y.pow(2).mean(0, keepdim=True)).detach()
    loss_t = -(p * log_s.gather(1, label)).sum(1).mean()
    smooth = torch.zeros_like(logits).scatter_(1, label, 0.9) + 0.1 / c
    w_logits = weak(as_vector(feature).float())
    log_w = F.log_softmax(w_logits, dim=1)
    loss_weak = -(mu * smooth * log_w).sum(1).mean()
    w = log_w.exp()
    score = w / (1 - w.gather(1, label) + 1e-6) + log_s / (1 - log_s.gather(1, label) + 1e-6)
    # each class's Zipf weight 1 / (its position in the descending order of the score + 1)
    order = score.argsort(dim=1, descending=True)
    zipf = (1.0 / torch.arange(1, c + 1, device=logits.device, dtype=logits.dtype)).expand(n, c)
    z = zipf.gather(1, order.argsort(dim=1))
    gt = F.one_hot(targets, c).bool()
    z = z.masked_fill(gt, 0.0)
    z = (z / z.sum(1, keepdim=True)).detach()
    log_q = F.log_softmax(logits.masked_fill(gt, float("-inf")), dim=1).masked_fill(gt, 0.0)
    loss_non = -(z * log_q).sum(1).mean()
    return alpha * loss_t + beta * loss_non + loss_weak


class USKD:
    config_class = USKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(terms={"uskd"}, student_taps=config.student)

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        student_out, _ = probe
        return {NAME: nn.Linear(as_vector(student_out.features[self.config.student]).shape[1],
                                student_out.logits.shape[1])}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        loss = uskd_loss(student_out.features[cfg.student], student_out.logits, batch.targets, stage.extra[NAME],
                         alpha=cfg.alpha, beta=cfg.beta, mu=cfg.mu)
        return {"uskd": loss}
