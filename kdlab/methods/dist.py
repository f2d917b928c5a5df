"""DIST: knowledge distillation from a stronger teacher (Huang, You, Wang, Qian, Xu 2022,
"Knowledge Distillation from A Stronger Teacher", NeurIPS, arXiv:2205.10536).

Instead of matching the teacher's probabilities exactly (KL), the student matches their
*relations*, measured by Pearson correlation, which tolerates a teacher much stronger than the
student:

    P = softmax(z / T)  (batch x classes)
    inter = 1 - mean_i pearson(P_s[i, :], P_t[i, :])     (each sample's ranking of the classes)
    intra = 1 - mean_c pearson(P_s[:, c], P_t[:, c])     (each class's ranking of the samples)
    loss  = T^2 * (beta * inter + gamma * intra)

Defaults are the paper's CIFAR-100 settings (beta = gamma = 1, T = 4). The intra-class term
compares samples, so under ``--nproc`` it is computed over the whole global batch
(``stage.gather``), as in one process. Loss term ``dist``; the hard-label term comes from
``supervised`` (or ``logit_kd``). ``standardize``: logit standardisation (see ``logit_kd``).
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
class DISTConfig:
    beta: float = field(default=1.0, validator=v.ge(0))  # inter-class relation weight
    gamma: float = field(default=1.0, validator=v.ge(0))  # intra-class relation weight
    temperature: float = field(default=4.0, validator=v.gt(0))
    standardize: bool = False


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float, beta: float,
              gamma: float) -> torch.Tensor:
    p_s = F.softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    inter = 1 - pearson_rows(p_s, p_t).mean()
    intra = 1 - pearson_rows(p_s.t(), p_t.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)


class DIST:
    config_class = DISTConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"dist"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        norm = logits_of(cfg)
        s = stage.gather(norm(student_out.logits))
        loss = sum(dist_loss(s, stage.gather(norm(t.logits)), temperature=cfg.temperature, beta=cfg.beta,
                             gamma=cfg.gamma) for t in teacher_outs)
        return {"dist": loss / len(teacher_outs)}
