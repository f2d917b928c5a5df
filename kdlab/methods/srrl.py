"""Softmax regression representation learning (Yang, Martinez, Bulat, Tzimiropoulos 2021,
"Knowledge Distillation via Softmax Regression Representation Learning", ICLR), the method the
issue tracker calls SRD.

The student's penultimate feature map, through a connector (1x1 convolution without bias,
BatchNorm, ReLU), is made to *work in the teacher's classifier*: pooled and passed through the
teacher's frozen linear head, it must give the teacher's logits (softmax regression), and its
pooled channels must match the teacher's (feature matching):

    x = connector(F_s);  fm = mean_i mean_c (avg_hw x - avg_hw F_t)^2
    sr = mse(head_t(avg_hw x), z_t)                  (mean over samples and classes)
    loss = alpha * fm + beta * sr

Defaults and connector (with its He initialisation) as the authors' second implementation in
cls_KD (mmcls/models/dis_losses/srrl.py; alpha 1, beta 5 in its CIFAR-100 and ImageNet configs
at 1e5d48f; checked against it, values and gradients with the connector:
benchmarks/parity_peers.py). ``teacher_head`` is a teacher tap alias whose module is the
teacher's classifier, an ``nn.Linear`` taking the pooled feature (e.g. ``fc`` in kdlab's CIFAR
ResNets, ``head`` in the compact CNN); gradients flow through it to the student, its weights stay
frozen. The taps ``student``/``teacher`` are the maps before the pooling. The connector trains
with the student and is not exported. Loss term ``srrl``.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import KdlabError, hookimpl
from kdlab.methods.feature_pairs import FeaturePairConfig, as_spatial, feature_pair_requirements, paired

NAME = "srrl"


@attrs.frozen(kw_only=True)
class SRRLConfig(FeaturePairConfig):
    student: str = "feat"  # the student's last feature map, before pooling
    teacher: str = "feat"  # the teacher's
    teacher_head: str = "head"  # teacher tap alias of its linear classifier
    alpha: float = field(default=1.0, validator=v.ge(0))  # feature matching
    beta: float = field(default=5.0, validator=v.ge(0))  # softmax regression


def connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """cls_KD's SRRL connector, with its initialisation."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))  # n = k * k * out channels
    bn = nn.BatchNorm2d(teacher_channels)
    return nn.Sequential(conv, bn, nn.ReLU())


def srrl_loss(aligned: torch.Tensor, teacher_map: torch.Tensor, teacher_logits: torch.Tensor, head: nn.Linear, *,
              alpha: float = 1.0, beta: float = 5.0) -> torch.Tensor:
    """``aligned``: the connected student map (N, C_t, H, W); ``head`` the teacher's classifier."""
    x_mean = aligned.flatten(2).mean(2)
    y_mean = teacher_map.flatten(2).mean(2)
    fm = (x_mean - y_mean).pow(2).mean(1).mean()
    sr = F.mse_loss(F.linear(x_mean, head.weight, head.bias), teacher_logits)
    return alpha * fm + beta * sr


class SRRL:
    config_class = SRRLConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        req = feature_pair_requirements(config, stage, {NAME})
        return attrs.evolve(req, teacher_taps=((config.teacher_index, (config.teacher, config.teacher_head)),))

    def _head(self, stage) -> nn.Linear:
        cfg = self.config
        head = stage.teacher_taps[cfg.teacher_index].modules[cfg.teacher_head]
        if not isinstance(head, nn.Linear):
            raise KdlabError(f"stages.{stage.name}.methods.{NAME}.teacher_head: the teacher tap '{cfg.teacher_head}' "
                             f"is a {type(head).__name__}; SRRL passes the student's feature through the teacher's "
                             "linear classifier, so tap that nn.Linear")
        return head

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        s, t = paired(cfg, *probe)
        head = self._head(stage)
        channels = as_spatial(t).shape[1]
        if head.in_features != channels:
            raise KdlabError(f"stages.{stage.name}.methods.{NAME}: the teacher's head takes {head.in_features} "
                             f"features, its tap '{cfg.teacher}' has {channels} channels; tap the map the head pools")
        return {NAME: connector(as_spatial(s).shape[1], channels)}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        s, t = paired(cfg, student_out, teacher_outs)
        aligned = stage.extra[NAME](as_spatial(s).float())
        return {NAME: srrl_loss(aligned, as_spatial(t).float(), teacher_outs[cfg.teacher_index].logits.float(),
                                self._head(stage), alpha=cfg.alpha, beta=cfg.beta)}
