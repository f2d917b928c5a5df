"""Overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak, Choi 2019, "A Comprehensive
Overhaul of Feature Distillation", ICCV, arXiv:1904.01866).

The student's pre-ReLU features, through a connector (convolution without bias + BatchNorm),
are matched to the teacher's pre-ReLU features with a partial L2 that ignores what the ReLU
would discard: where the teacher is below its margin m and the student is below it too, there is
nothing to learn. Per channel, m is the expectation of the teacher's negative responses, read
from the BatchNorm before its ReLU (weight s, bias b):

    m = b - |s| phi(b/|s|) / Phi(-b/|s|)       (-3 |s| where Phi(-b/|s|) <= 0.001)
    l(x, t) = (x - m)^2 [x > m, t <= m] + (x - t)^2 [x > t, m < t <= 0] + (x - t)^2 [t > 0]
    loss = weight * sum_i 2^-(n - 1 - i) * sum_{c,h,w} mean_batch l(connector_i(S_i), pool(T_i))

(the teacher map average-pooled to the student's size; the deepest of n pairs weighs 1).
Defaults as mdistiller (mdistiller/distillers/OFD.py, cfg.py: feature weight 1e-3, connector
kernel 1; checked against it, values and gradients with the connectors:
benchmarks/parity_peers.py). Tap the maps *before* their ReLU. ``teacher_bn`` names, per pair,
the teacher tap of the BatchNorm that precedes that ReLU (its weight and bias give the margin);
left out, the teacher taps themselves must be BatchNorm modules (e.g. a block's last BN where
the block adds no shortcut after it). The connectors train with the student and are not
exported. Loss term ``ofd``.
"""

from __future__ import annotations

import math

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import KdlabError, hookimpl
from kdlab.engine.recipe import ALIASES
from kdlab.methods.feature_pairs import alias_pairs, as_spatial, feature_pair_requirements

NAME = "ofd"


@attrs.frozen(kw_only=True)
class OFDConfig:
    student: ALIASES = "feat"  # pre-ReLU tap aliases of the student
    teacher: ALIASES = "feat"  # the paired pre-ReLU aliases of the teacher
    teacher_bn: ALIASES = ()  # per pair, the teacher tap of the BatchNorm before its ReLU (empty: the teacher taps)
    teacher_index: int = field(default=0, validator=v.ge(0))
    kernel_size: int = field(default=1, validator=v.ge(1))
    weight: float = field(default=0.001, validator=v.ge(0))


def margins(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per channel, the expectation of the negative part of N(b, s^2) (1, C, 1, 1)."""
    s = bn.weight.detach().double().abs()
    m = bn.bias.detach().double()
    cdf = torch.special.ndtr(-m / s)  # scipy's norm.cdf in the authors' code
    pdf = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > 0.001, -s * pdf / cdf + m, -3 * s)
    return margin.float().view(1, -1, 1, 1)


def ofd_pair_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    margin = margin.to(source)
    loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin))
            + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0))
            + (source - target) ** 2 * (target > 0))
    return loss.abs().mean(dim=0).sum()


def ofd_loss(sources: list[torch.Tensor], targets: list[torch.Tensor], margin_list: list[torch.Tensor]) -> torch.Tensor:
    """``sources``: the connected student maps; ``targets``: the teacher's (pooled here)."""
    n = len(sources)
    return sum(ofd_pair_loss(s, nn.functional.adaptive_avg_pool2d(t, s.shape[-2:]).detach(), m) / 2 ** (n - i - 1)
               for i, (s, t, m) in enumerate(zip(sources, targets, margin_list)))


def connector(student_channels: int, teacher_channels: int, kernel_size: int) -> nn.Sequential:
    """mdistiller's ConnectorConvBN, with its initialisation."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * teacher_channels)))
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels))


def _bn_aliases(cfg) -> list[str]:
    teachers = [t for _, t in alias_pairs(cfg)]
    if not cfg.teacher_bn:
        return teachers
    return [cfg.teacher_bn] if isinstance(cfg.teacher_bn, str) else list(cfg.teacher_bn)


class OFD:
    config_class = OFDConfig

    def __init__(self, config):
        self.config = config
        self.margins: list[torch.Tensor] = []

    @staticmethod
    def requires(config, stage):
        req = feature_pair_requirements(config, stage, {NAME})
        pairs, bns = alias_pairs(config), _bn_aliases(config)
        problems = req.problems
        if len(bns) != len(pairs):
            problems += (("teacher_bn", f"lists {len(bns)} BatchNorm tap(s) for {len(pairs)} pair(s)"),)
        teacher = tuple(dict.fromkeys([t for _, t in pairs] + bns))
        return attrs.evolve(req, teacher_taps=((config.teacher_index, teacher),), problems=problems)

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        student_out, teacher_outs = probe
        taps = stage.teacher_taps[cfg.teacher_index]
        key = "teacher_bn" if cfg.teacher_bn else "teacher"
        self.margins = []
        for alias in _bn_aliases(cfg):
            bn = taps.modules[alias]
            if not isinstance(bn, nn.BatchNorm2d) or not bn.affine:
                raise KdlabError(f"stages.{stage.name}.methods.{NAME}.{key}: the teacher tap '{alias}' is a "
                                 f"{type(bn).__name__}; OFD reads its margins from the affine BatchNorm2d before "
                                 "the ReLU (name it in teacher_bn)")
            self.margins.append(margins(bn).to(stage.device))
        connectors = []
        for (s, t), m in zip(alias_pairs(cfg), self.margins):
            fs, ft = as_spatial(student_out.features[s]), as_spatial(teacher_outs[cfg.teacher_index].features[t])
            if m.shape[1] != ft.shape[1]:
                raise KdlabError(f"stages.{stage.name}.methods.{NAME}: the BatchNorm of pair '{s}'/'{t}' has "
                                 f"{m.shape[1]} channels, the teacher map {ft.shape[1]}")
            connectors.append(connector(fs.shape[1], ft.shape[1], cfg.kernel_size))
        return {NAME: nn.ModuleList(connectors)}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        teacher = teacher_outs[cfg.teacher_index].features
        pairs = alias_pairs(cfg)
        sources = [c(as_spatial(student_out.features[s]).float()) for c, (s, _) in zip(stage.extra[NAME], pairs)]
        targets = [as_spatial(teacher[t]).float() for _, t in pairs]
        return {NAME: cfg.weight * ofd_loss(sources, targets, self.margins)}
