"""Teacher-student contrastive term (seed 000 adds "a contrastive component" to the
distillation loss of compact CNNs).

Which one, and why: an InfoNCE loss between the student's and the teacher's embeddings of the
same batch, in the spirit of CRD (Tian et al. 2020, "Contrastive Representation Distillation",
arXiv:1910.10699; the strongest single method in the RepDistiller table of REFERENCES.md). Both
embeddings pass through small learned linear projections to ``dim`` and are L2-normalised; the
student embedding of sample i must pick the teacher embedding of sample i out of the batch
(logits = cosine similarity / ``tau``). Unlike a supervised contrastive loss it transfers the
teacher's relational knowledge, not only the labels; unlike CRD it uses the other samples of the
batch as negatives instead of a memory bank, which suits small CPU-sized runs. With
``class_positives = true`` every teacher embedding of the same class counts as a positive
(the supervised variant). The projections train with the student and are not exported.
Loss term: ``contrastive``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import hookimpl
from kdlab.methods.feature_pairs import (FeaturePairConfig, as_vector, feature_pair_requirements, paired)

NAME = "contrastive"


@attrs.frozen(kw_only=True)
class ContrastiveConfig(FeaturePairConfig):
    dim: int = field(default=32, validator=v.ge(1))
    tau: float = field(default=0.1, validator=v.gt(0))
    class_positives: bool = False


def info_nce(student_z: torch.Tensor, teacher_z: torch.Tensor, *, tau: float,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over students i of -mean_{p in P(i)} log softmax_j(cos(s_i, t_j) / tau)[p], where P(i)
    is {i} or, with ``labels``, every j of the same class."""
    logits = F.normalize(student_z.float(), dim=1) @ F.normalize(teacher_z.float(), dim=1).t() / tau
    log_prob = F.log_softmax(logits, dim=1)
    if labels is None:
        return -log_prob.diagonal().mean()
    positives = (labels[:, None] == labels[None, :]).to(log_prob.dtype)
    return -((log_prob * positives).sum(1) / positives.sum(1)).mean()


class Contrastive:
    config_class = ContrastiveConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"contrastive"})

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        student_out, teacher_outs = probe  # taps checked at stage start
        s_feat, t_feat = paired(cfg, student_out, teacher_outs)
        ds, dt = as_vector(s_feat).shape[1], as_vector(t_feat).shape[1]
        return {f"{NAME}_student": nn.Linear(ds, cfg.dim), f"{NAME}_teacher": nn.Linear(dt, cfg.dim)}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        s_feat, t_feat = paired(cfg, student_out, teacher_outs)
        zs = stage.extra[f"{NAME}_student"](as_vector(s_feat).float())
        zt = stage.extra[f"{NAME}_teacher"](as_vector(t_feat).float())
        labels = stage.gather(batch.targets) if cfg.class_positives else None
        # negatives come from the whole global batch, as in one process
        return {"contrastive": info_nce(stage.gather(zs), stage.gather(zt), tau=cfg.tau, labels=labels)}
