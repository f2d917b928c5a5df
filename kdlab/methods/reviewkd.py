"""Knowledge review (Chen, Liu, Zhao, Jia 2021, "Distilling Knowledge via Knowledge Review",
CVPR, arXiv:2104.09044).

The student's features at several depths (``student``: tap aliases from shallow to deep; the
last may be the pooled embedding) are fused from the deepest back to the shallowest by
attention-based fusion modules (ABF: 1x1 conv + BN to ``mid_channels``; from the second on, a
1x1 conv + sigmoid weighs the current map against the upsampled fused map from below; then 3x3
conv + BN to the paired teacher feature's channels and size). Each fused map is compared with the
teacher's feature at the same depth (``teacher``) by the hierarchical context loss:

    HCL(f, t) = (mse(f, t) + sum_l w_l mse(pool_l(f), pool_l(t))) / (1 + sum_l w_l),
                pools l = 4, 2, 1 (those smaller than the map), w = 1/2, 1/4, 1/8
    loss = weight * warmup * sum over depths of HCL,  warmup = min(epoch / warmup_epochs, 1)

Defaults are mdistiller's CIFAR-100 settings: weight 5 (configs/cifar100/reviewkd.yaml,
``REVIEWKD_WEIGHT: 5.0``, read at mdistiller commit a08d46f; its engine/cfg.py default is 1.0,
which the CIFAR-100 config overrides), 20 warm-up epochs (cfg.py ``WARMUP_EPOCHS``), mid channels
min(512, the deepest student width) (cfg.py ``MAX_MID_CHANNEL``). mdistiller compares with the teacher's pre-activation
features; kdlab taps module outputs, so point ``teacher`` taps at the layers you want (a block's
output is after its ReLU). The ABF modules train with the student and are not exported. Loss term
``reviewkd``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import hookimpl
from kdlab.methods.dkd import warmup_factor
from kdlab.methods.feature_pairs import as_spatial, feature_pair_requirements

NAME = "reviewkd"


@attrs.frozen(kw_only=True)
class ReviewKDConfig:
    student: tuple[str, ...] = ("l1", "l2", "l3", "emb")  # shallow to deep
    teacher: tuple[str, ...] = ("l1", "l2", "l3", "emb")
    teacher_index: int = field(default=0, validator=v.ge(0))
    weight: float = field(default=5.0, validator=v.ge(0))  # mdistiller configs/cifar100/reviewkd.yaml
    warmup_epochs: int = field(default=20, validator=v.ge(0))
    max_mid_channels: int = field(default=512, validator=v.ge(1))


def hcl_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], levels=(4, 2, 1)) -> torch.Tensor:
    total = 0.0
    for fs, ft in zip(student, teacher):
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for level in levels:
            if level >= fs.shape[-2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.att = nn.Sequential(nn.Conv2d(mid * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, below: torch.Tensor | None, out_size: tuple[int, int]):
        x = self.conv1(x)
        if self.att is not None:
            below = F.interpolate(below, x.shape[-2:], mode="nearest")
            z = self.att(torch.cat([x, below], dim=1))
            x = x * z[:, :1] + below * z[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


class ReviewHead(nn.Module):
    """ABF modules from the deepest feature to the shallowest."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int], max_mid: int):
        super().__init__()
        mid = min(max_mid, student_channels[-1])
        n = len(student_channels)
        self.abfs = nn.ModuleList([ABF(student_channels[i], mid, teacher_channels[i], fuse=i < n - 1)
                                   for i in reversed(range(n))])

    def forward(self, student: list[torch.Tensor], out_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        fused, below = [], None
        for abf, x, size in zip(self.abfs, reversed(student), reversed(out_sizes)):
            out, below = abf(x, below, size)
            fused.insert(0, out)
        return fused


class ReviewKD:
    config_class = ReviewKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"reviewkd"}, minimum=2)

    def _features(self, cfg, student_out, teacher_outs):
        s = [as_spatial(student_out.features[k].float()) for k in cfg.student]
        t = [as_spatial(teacher_outs[cfg.teacher_index].features[k].float()) for k in cfg.teacher]
        return s, t

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        s, t = self._features(cfg, *probe)
        return {NAME: ReviewHead([x.shape[1] for x in s], [x.shape[1] for x in t], cfg.max_mid_channels)}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        s, t = self._features(cfg, student_out, teacher_outs)
        fused = stage.extra[NAME](s, [x.shape[-2:] for x in t])
        return {"reviewkd": cfg.weight * warmup_factor(stage.epoch, cfg.warmup_epochs) * hcl_loss(fused, t)}
