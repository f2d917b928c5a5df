"""Feature hints (FitNets: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets",
arXiv:1412.6550).

A student feature tap passes through a learned adapter and is pulled towards a teacher feature
tap with MSE. The adapter is built from the tapped shapes. Between feature maps, ``adapter =
"regressor"`` (the default) is the published hint regressor, RepDistiller's ConvReg (a
convolution that also bridges a 2x or smaller size difference, BatchNorm, ReLU: models/util.py,
checked against it, values and gradients: benchmarks/parity_peers.py); ``"conv1x1"`` a bare
1x1 convolution after average-pooling the larger map to the smaller one's size (kdlab's adapter
before issue #31; kept for the recipes that report with it). Between vectors: a linear layer.
Weight 100, as RepDistiller's CIFAR-100 script (scripts/run_cifar_distill.sh, ``--distill hint
-b 100``) and mdistiller's FITNET.LOSS.FEAT_WEIGHT.
A transformer teacher's token sequence is laid out on its patch grid first (class token
dropped), which bridges a ViT teacher and a CNN student. The adapter trains with the student, is
saved in checkpoints, and is not part of the exported student. Loss term: ``hint``.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import KdlabError, hookimpl
from kdlab.methods.feature_pairs import (FeaturePairConfig, as_map, as_vector, conv_regressor, feature_pair_requirements,
                                         match_spatial, paired)

NAME = "feature_kd"


@attrs.frozen(kw_only=True)
class FeatureKDConfig(FeaturePairConfig):
    student: str = "feat"  # alias in [stages.<s>.taps.student]
    teacher: str = "feat"  # alias in [stages.<s>.taps.teacher]
    weight: float = field(default=100.0, validator=v.ge(0))  # RepDistiller's and mdistiller's CIFAR-100 setting
    adapter: Literal["regressor", "conv1x1"] = "regressor"  # between maps (vectors: linear)


def make_adapter(student_feat: torch.Tensor, teacher_feat: torch.Tensor, kind: str = "regressor") -> nn.Module:
    s, t = as_map(student_feat), as_map(teacher_feat)
    if s.dim() == 4 and t.dim() == 4:
        if kind == "regressor":
            return conv_regressor(s, t, relu=True)
        return nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1)
    return nn.Linear(as_vector(s).shape[1], as_vector(t).shape[1])


def feature_hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """MSE between adapter(student feature) and the teacher feature, shapes bridged as above."""
    s, t = as_map(student_feat.float()), as_map(teacher_feat.float())
    if s.dim() == 4 and t.dim() == 4:  # a regressor maps to the teacher's size; a 1x1 convolution is pooled
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
        try:
            return {f"{NAME}_adapter": make_adapter(*paired(cfg, student_out, teacher_outs), cfg.adapter)}
        except KdlabError as exc:
            raise KdlabError(f"stages.{stage.name}.methods.{NAME}.adapter = '{cfg.adapter}': {exc} "
                             "(adapter = 'conv1x1' pools instead)") from exc

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out, teacher_outs):
        cfg = self.config
        hint = feature_hint_loss(*paired(cfg, student_out, teacher_outs), stage.extra[f"{NAME}_adapter"])
        return {"hint": hint if cfg.weight == 1.0 else cfg.weight * hint}
