"""Activation boundaries (Heo, Lee, Yun, Choi 2019, "Knowledge Transfer via Distillation of
Activation Boundaries Formed by Hidden Neurons", AAAI, arXiv:1811.03233).

The student learns where the teacher's neurons switch on: at each pair of pre-activation taps
a connector (convolution + BatchNorm, RepDistiller's ConvReg without ReLU) maps the student's
map to the teacher's shape, and a hinge-like "alternative L2" loss with margin m pushes each
connected response r past -m where the teacher's response t is off and past +m where it is on:

    l(r, t) = sum (r + m)^2 [r > -m and t <= 0] + (r - m)^2 [r <= m and t > 0]
    loss = weight * sum_i 2^(i - n + 1) l(r_i, t_i) / N          (n pairs, the deepest weighs 1)

Defaults as RepDistiller (distiller_zoo/AB.py, checked against it, values and gradients:
benchmarks/parity_peers.py): margin 1, weight 3/1000; its CIFAR-100 protocol uses AB in a
first phase of 30 epochs that trains the student's feature layers and the connectors on it
alone (``--init_epochs``), then KD: in kdlab, two stages, the second with ``init``. Tap the
maps *before* their ReLU (RepDistiller's ``preact=True``), e.g. a block's last BatchNorm.
The connectors train with the student and are not exported. Loss term ``ab``.
"""

from __future__ import annotations

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import hookimpl
from kdlab.methods.feature_pairs import as_spatial, conv_regressor, feature_pair_requirements

NAME = "ab"


@attrs.frozen(kw_only=True)
class ABConfig:
    student: tuple[str, ...] = ("feat",)  # pre-activation tap aliases of the student
    teacher: tuple[str, ...] = ("feat",)  # the paired aliases of the teacher
    teacher_index: int = field(default=0, validator=v.ge(0))
    margin: float = field(default=1.0, validator=v.gt(0))
    weight: float = field(default=0.003, validator=v.ge(0))  # RepDistiller's "/ 1000 * 3"


def alternative_l2(response: torch.Tensor, teacher: torch.Tensor, margin: float) -> torch.Tensor:
    """The sum over elements of the activation-boundary loss of ``response`` against ``teacher``."""
    off = (response > -margin) & (teacher <= 0)
    on = (response <= margin) & (teacher > 0)
    return ((response + margin).pow(2) * off + (response - margin).pow(2) * on).sum()


def ab_loss(responses: list[torch.Tensor], teachers: list[torch.Tensor], margin: float) -> torch.Tensor:
    """sum_i 2^(i - n + 1) alternative_l2(r_i, t_i) / N over the n pairs."""
    n = len(responses)
    batch = responses[0].shape[0]
    return sum(2.0 ** (i - n + 1) * alternative_l2(r, t, margin)
               for i, (r, t) in enumerate(zip(responses, teachers))) / batch


class AB:
    config_class = ABConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"ab"})

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        student_out, teacher_outs = probe
        teacher = teacher_outs[cfg.teacher_index].features
        connectors = []
        for s, t in zip(cfg.student, cfg.teacher):
            fs, ft = as_spatial(student_out.features[s]), as_spatial(teacher[t])
            # RepDistiller: no connector where the shapes already agree
            connectors.append(nn.Identity() if fs.shape[1:] == ft.shape[1:] else conv_regressor(fs, ft, relu=False))
        return {NAME: nn.ModuleList(connectors)}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        teacher = teacher_outs[cfg.teacher_index].features
        connectors = stage.extra[NAME]
        responses = [c(as_spatial(student_out.features[s]).float()) for c, s in zip(connectors, cfg.student)]
        targets = [as_spatial(teacher[t]).float() for t in cfg.teacher]
        return {"ab": cfg.weight * ab_loss(responses, targets, cfg.margin)}
