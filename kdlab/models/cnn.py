"""The compact CNN family of seed 000: a stack of conv blocks (regular or depthwise-separable 3x3,
batch norm, ReLU, optional squeeze-and-excitation), 2x2 max-pooling after each block while the
feature map is at least 4 pixels wide, global average pooling and a linear head.

Tap points: ``blocks.<i>``, ``embed`` (the pooled vector) and ``head``.
"""

from __future__ import annotations

import attrs
from attrs import field
from attrs import validators as v
from torch import nn


def _non_empty_positive(_inst, attr, value):
    if not value or any(c < 1 for c in value):
        raise ValueError(f"must be a non-empty list of positive integers, got {list(value)}")


@attrs.frozen(kw_only=True)
class CompactCNNConfig:
    channels: tuple[int, ...] = field(default=(16, 32), validator=_non_empty_positive)
    separable: bool = False  # depthwise-separable convs in every block but the first
    se: bool = False  # squeeze-and-excitation after every block
    se_reduction: int = field(default=4, validator=v.ge(1))
    dropout: float = field(default=0.0, validator=[v.ge(0), v.lt(1)])
    norm: bool = True  # batch norm after every conv (without it, convs have a bias)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.gate(x)


def conv_block(cin: int, cout: int, *, separable: bool, se: bool, se_reduction: int, pool: bool,
               norm: bool = True) -> nn.Sequential:
    if separable:
        layers = [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=not norm)]
    else:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=not norm)]
    layers += [nn.BatchNorm2d(cout) if norm else nn.Identity(), nn.ReLU(inplace=True)]
    if se:
        layers.append(SqueezeExcite(cout, se_reduction))
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class CompactCNN(nn.Module):
    def __init__(self, config: CompactCNNConfig, in_channels: int, size: int, num_classes: int):
        super().__init__()
        blocks, cin = [], in_channels
        for i, cout in enumerate(config.channels):
            pool = size >= 4
            blocks.append(conv_block(cin, cout, separable=config.separable and i > 0, se=config.se,
                                     se_reduction=config.se_reduction, pool=pool, norm=config.norm))
            size, cin = (size // 2 if pool else size), cout
        self.blocks = nn.Sequential(*blocks)
        self.embed = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.dropout(self.embed(self.blocks(x))))


def build(config: CompactCNNConfig, data) -> CompactCNN:
    return CompactCNN(config, data.input_shape[0], min(data.input_shape[1:]), data.num_classes)


ARCH = (CompactCNNConfig, build)  # the `kdlab.models` entry point: config class, builder
