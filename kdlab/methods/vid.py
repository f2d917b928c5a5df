"""Variational information distillation (Ahn, Hu, Damianou, Lawrence, Dai 2019, "Variational
Information Distillation for Knowledge Transfer", CVPR, arXiv:1904.05835).

Maximises a variational lower bound on the mutual information between a teacher feature t and a
student feature s: a Gaussian q(t | s) whose mean is a small network of s (1x1 conv, ReLU, 1x1
conv, ReLU, 1x1 conv, without biases, as published) and whose variance is one learned value per teacher channel,
sigma_c^2 = softplus(a_c) + eps. The loss is its negative log-likelihood (up to a constant):

    loss = weight * mean over batch, channels, positions of
           0.5 * ((mu_c(s) - t_c)^2 / sigma_c^2 + log sigma_c^2)

The larger map of the pair is average-pooled to the smaller one's size; vectors are treated as
1x1 maps; token sequences are laid out on their grid. Settings as in RepDistiller: hidden width =
the teacher's channels, initial variance 5, eps 1e-5, weight 1. The regressor and variances train
with the student and are not exported. Loss term ``vid``.
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
from kdlab.methods.feature_pairs import (FeaturePairConfig, as_spatial, feature_pair_requirements, match_spatial, paired)

NAME = "vid"


@attrs.frozen(kw_only=True)
class VIDConfig(FeaturePairConfig):
    student: str = "feat"
    teacher: str = "feat"
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
        s, t = paired(cfg, *probe)
        return {NAME: VIDHead(as_spatial(s).shape[1], as_spatial(t).shape[1], cfg.init_var, cfg.eps)}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        s, t = paired(cfg, student_out, teacher_outs)
        s, t = match_spatial(as_spatial(s).float(), as_spatial(t).float())
        head = stage.extra[NAME]
        return {"vid": cfg.weight * vid_loss(head.mean(s), head.variance(), t)}
