"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention",
ICLR, arXiv:1612.03928).

A feature map's spatial attention is the channel mean of its activations to the power p, flattened
and L2-normalised; the student's attention maps are pulled to the teacher's at one or more pairs
of taps:

    a(F) = normalize(mean_c |F_c|^p)          (N, H*W)
    loss = beta * sum_pairs mean((a(F_s) - a(F_t))^2)

``student`` and ``teacher`` list the paired tap aliases (same length; the larger map of a pair
is average-pooled to the smaller one's size; token sequences are laid out on their grid).
Defaults as in RepDistiller's CIFAR-100 runs: p = 2, beta = 1000. The mean is over the batch and
the H*W positions, as in the authors' code. Loss term ``at``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import hookimpl
from kdlab.methods.feature_pairs import as_map, feature_pair_requirements, match_spatial

NAME = "attention"


@attrs.frozen(kw_only=True)
class AttentionConfig:
    student: tuple[str, ...] = ("feat",)  # tap aliases in [stages.<s>.taps.student]
    teacher: tuple[str, ...] = ("feat",)  # the paired aliases in the teacher's taps
    teacher_index: int = field(default=0, validator=v.ge(0))
    p: float = field(default=2.0, validator=v.gt(0))
    beta: float = field(default=1000.0, validator=v.ge(0))


def attention_map(feature: torch.Tensor, p: float) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): normalize(mean over channels of |F|^p)."""
    return F.normalize(feature.float().abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float) -> torch.Tensor:
    student, teacher = match_spatial(as_map(student), as_map(teacher))
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


class Attention:
    config_class = AttentionConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"at"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        teacher = teacher_outs[cfg.teacher_index].features
        loss = sum(attention_loss(student_out.features[s], teacher[t], cfg.p) for s, t in zip(cfg.student, cfg.teacher))
        return {"at": cfg.beta * loss}
