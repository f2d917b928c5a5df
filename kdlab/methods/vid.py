"""Variational information distillation (Ahn, Hu, Damianou, Lawrence, Dai 2019, "Variational
Information Distillation for Knowledge Transfer", CVPR, arXiv:1904.05835).

Maximises a variational lower bound on the mutual information between a teacher feature t and a
student feature s: a Gaussian q(t | s) whose mean is a small network of s (1x1 conv, ReLU, 1x1
conv, ReLU, 1x1 conv, without biases, as published) and whose variance is one learned value per teacher channel,
sigma_c^2 = softplus(a_c) + eps. The loss is its negative log-likelihood (up to a constant):

    loss = weight * mean over batch, channels, positions of
           0.5 * ((mu_c(s) - t_c)^2 / sigma_c^2 + log sigma_c^2)

The larger map of the pair is average-pooled to the smaller one's size; vectors are treated as
1x1 maps; token sequences are laid out on their grid. ``student`` and ``teacher``: one tap alias
each, or paired lists, one regressor per pair and the sum of the pairs' losses (RepDistiller:
its three stage outputs, feat_s[1:-1], helper/loops.py). Settings as in RepDistiller: hidden
width = the teacher's channels, initial variance 5, eps 1e-5, weight 1 (scripts/run_cifar_distill.sh,
``-b 1``). The regressors and variances train with the student and are not exported. Loss term ``vid``.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import hookimpl
from kdlab.engine.recipe import ALIASES
from kdlab.methods.feature_pairs import FeaturePairConfig, alias_pairs, as_spatial, feature_pair_requirements, match_spatial

NAME = "vid"


@attrs.frozen(kw_only=True)
class VIDConfig(FeaturePairConfig):
    student: ALIASES = "feat"  # a tap alias, or a list of them
    teacher: ALIASES = "feat"  # the paired alias(es) of the teacher
    weight: float = field(default=1.0, validator=v.ge(0))
    init_var: float = field(default=5.0, validator=v.gt(0))
    eps: float = field(default=1e-5, validator=v.gt(0))


class VIDHead(nn.Module):
    """The mean network and the per-channel variance of q(t | s)."""

    def __init__(self, student_channels: int, teacher_channels: int, init_var: float, eps: float):
        super().__init__()
        mid = teacher_channels
        # without biases, as the paper's regressor and RepDistiller's (its conv1x1 has bias=False)
        self.mean = nn.Sequential(nn.Conv2d(student_channels, mid, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(mid, mid, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(mid, teacher_channels, 1, bias=False))
        # softplus(a) + eps = init_var at the start
        self.log_scale = nn.Parameter(torch.full((teacher_channels,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        return F.softplus(self.log_scale) + self.eps


def vid_loss(mean: torch.Tensor, variance: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (without its constant) of ``teacher`` (N, C, H, W)
    under N(mean, variance[c])."""
    var = variance.view(1, -1, 1, 1)
    return (0.5 * ((mean - teacher) ** 2 / var + torch.log(var))).mean()


class VID:
    config_class = VIDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"vid"})

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        student_out, teacher_outs = probe
        teacher = teacher_outs[cfg.teacher_index].features
        heads = [VIDHead(as_spatial(student_out.features[s]).shape[1], as_spatial(teacher[t]).shape[1],
                         cfg.init_var, cfg.eps) for s, t in alias_pairs(cfg)]
        # one alias: the head itself (the module layout of checkpoints before several pairs)
        return {NAME: heads[0] if isinstance(cfg.student, str) else nn.ModuleList(heads)}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        teacher = teacher_outs[cfg.teacher_index].features
        heads = stage.extra[NAME]
        heads = [heads] if isinstance(heads, VIDHead) else list(heads)
        loss = 0.0
        for head, (a, b) in zip(heads, alias_pairs(cfg)):
            s, t = match_spatial(as_spatial(student_out.features[a]).float(), as_spatial(teacher[b]).float())
            loss = loss + vid_loss(head.mean(s), head.variance(), t)
        return {"vid": cfg.weight * loss}
