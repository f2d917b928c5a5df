"""torchvision's ResNet-18 and ResNet-50, built without weights, with an optional CIFAR stem
(3x3 stride-1 first conv, no max-pool) for 32x32 inputs; a first conv for other channel counts.
Tap points: torchvision's module names (``layer1`` .. ``layer4``, ``avgpool``, ``fc``)."""

from __future__ import annotations

import attrs
from torch import nn


@attrs.frozen(kw_only=True)
class ResNetConfig:
    cifar_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for 32x32 inputs


def resnet(depth: int, config: ResNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    if config.cifar_stem or in_channels != 3:
        stride, kernel = (1, 3) if config.cifar_stem else (2, 7)
        model.conv1 = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=kernel // 2, bias=False)
    if config.cifar_stem:
        model.maxpool = nn.Identity()
    return model


def build_resnet18(config: ResNetConfig, data) -> nn.Module:
    return resnet(18, config, data.input_shape[0], data.num_classes)


def build_resnet50(config: ResNetConfig, data) -> nn.Module:
    return resnet(50, config, data.input_shape[0], data.num_classes)


# the `kdlab.models` entry points: config class, builder
RESNET18 = (ResNetConfig, build_resnet18)
RESNET50 = (ResNetConfig, build_resnet50)
