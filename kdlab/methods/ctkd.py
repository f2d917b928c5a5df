"""Curriculum temperature for knowledge distillation (Li, Li, Yang, Zhang, Tang, Yang 2023,
"Curriculum Temperature for Knowledge Distillation", AAAI, arXiv:2211.16231).

The KD temperature is learned *adversarially*: a global parameter theta gives
tau = t_start + t_end * sigmoid(theta), and a gradient-reversal layer multiplies its gradient
by lambda, so that the temperature moves to make the KD loss larger while the student makes it
smaller. lambda follows a cosine curriculum from ``lambda_max`` to ``lambda_min`` over
``lambda_epochs`` epochs (an easy task first, then harder ones):

    lambda(e) = lambda_min + (lambda_max - lambda_min) * (cos(pi * min(e, E) / E) + 1) / 2
    loss      = weight * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau)),  mean over the batch

``e`` counts epochs from 1, as the authors' loop does. Defaults as the authors' CIFAR-100
script (zhengli97/CTKD, scripts/run_cifar_distill.sh and models/temp_global.py: t_start 1,
t_end 20, theta starting at 1, lambda from 0 to -1 over 10 epochs; KD weight 0.9 with
cross-entropy 0.1: ``loss_weights = { ce = 0.1 }`` for the ``supervised`` term); checked
against that code, values and gradients including theta's (benchmarks/parity_peers.py).
theta trains with the student's optimizer (as there: the same optimizer and weight decay) and
is not exported; the stage metric ``ctkd/temperature`` is the temperature at the end.
Loss term ``ctkd``.
"""

from __future__ import annotations

import math

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import Requirements, hookimpl
from kdlab.methods.logit_kd import hinton_kd_loss

NAME = "ctkd"


@attrs.frozen(kw_only=True)
class CTKDConfig:
    weight: float = field(default=0.9, validator=v.ge(0))
    t_start: float = field(default=1.0, validator=v.gt(0))
    t_end: float = field(default=20.0, validator=v.ge(0))
    lambda_max: float = 0.0
    lambda_min: float = -1.0
    lambda_epochs: int = field(default=10, validator=v.ge(1))


def curriculum(epoch: int, cfg: CTKDConfig) -> float:
    """lambda at ``epoch`` (counted from 1)."""
    e = min(max(epoch, 0), cfg.lambda_epochs)
    return cfg.lambda_min + (cfg.lambda_max - cfg.lambda_min) * (math.cos(e * math.pi / cfg.lambda_epochs) + 1) / 2


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``scale`` backward (a gradient reversal for a
    negative scale). Written by hand: torch has no gradient-reversal op."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(1))

    def forward(self, scale: float, t_start: float, t_end: float) -> torch.Tensor:
        return t_start + t_end * torch.sigmoid(_ScaleGrad.apply(self.theta, scale))


def ctkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    return hinton_kd_loss(student_logits, teacher_logits, temperature=temperature).reshape(())


class CTKD:
    config_class = CTKDConfig

    def __init__(self, config):
        self.config = config
        self.last = None

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"ctkd"})

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        return {NAME: Temperature()}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        tau = stage.extra[NAME](curriculum(stage.epoch + 1, cfg), cfg.t_start, cfg.t_end)
        self.last = tau.detach()
        loss = sum(ctkd_loss(student_out.logits, t.logits, tau) for t in teacher_outs) / len(teacher_outs)
        return {"ctkd": cfg.weight * loss}

    @hookimpl
    def kdlab_stage_summary(self, stage, metrics):
        if self.last is not None:
            metrics[f"{NAME}/temperature"] = float(self.last)
