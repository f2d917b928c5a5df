"""Feature hints (FitNets: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets",
arXiv:1412.6550).

A student feature tap passes through a learned adapter and is pulled towards a teacher feature
tap with MSE. The adapter is built from the tapped shapes: a 1x1 convolution between feature maps
(the larger map is average-pooled to the smaller one's size), a linear layer between vectors.
A transformer teacher's token sequence is laid out on its patch grid first (class token
dropped), which bridges a ViT teacher and a CNN student. The adapter trains with the student, is
saved in checkpoints, and is not part of the exported student. Loss term: ``hint``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import hookimpl
from kdlab.methods.feature_pairs import (FeaturePairConfig, as_map, as_vector, feature_pair_requirements, match_spatial, paired)

NAME = "feature_kd"


@attrs.frozen(kw_only=True)
class FeatureKDConfig(FeaturePairConfig):
    student: str = "feat"  # alias in [stages.<s>.taps.student]
    teacher: str = "feat"  # alias in [stages.<s>.taps.teacher]
    weight: float = field(default=1.0, validator=v.ge(0))  # the published CIFAR-100 runs use 100


def make_adapter(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> nn.Module:
    s, t = as_map(student_feat), as_map(teacher_feat)
    if s.dim() == 4 and t.dim() == 4:
        return nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1)
    return nn.Linear(as_vector(s).shape[1], as_vector(t).shape[1])


def feature_hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """MSE between adapter(student feature) and the teacher feature, shapes bridged as above."""
    s, t = as_map(student_feat.float()), as_map(teacher_feat.float())
    if isinstance(adapter, nn.Conv2d):
        mapped, target = match_spatial(adapter(s), t)
    else:
        mapped, target = adapter(as_vector(s)), as_vector(t)
    return F.mse_loss(mapped, target)


class FeatureKD:
    config_class = FeatureKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"hint"})

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        student_out, teacher_outs = probe  # taps checked at stage start
        return {f"{NAME}_adapter": make_adapter(*paired(cfg, student_out, teacher_outs))}

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out, teacher_outs):
        cfg = self.config
        hint = feature_hint_loss(*paired(cfg, student_out, teacher_outs), stage.extra[f"{NAME}_adapter"])
        return {"hint": hint if cfg.weight == 1.0 else cfg.weight * hint}
