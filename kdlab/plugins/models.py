"""Image classifiers: a compact CNN family (seed 000), torchvision ResNet-18/50, and a small
vision transformer (torchvision's VisionTransformer) as a cross-architecture teacher (seed 003).

The compact family is a stack of conv blocks (regular or depthwise-separable 3x3, batch norm,
ReLU, optional squeeze-and-excitation), 2x2 max-pooling after each block while the feature map
is at least 4 pixels wide, global average pooling and a linear head. Tap points: ``blocks.<i>``,
``embed`` (the pooled vector) and ``head``. ViT tap points: ``encoder`` (all tokens after the
final layer norm, class token first) and ``encoder.layers.encoder_layer_<i>``.
"""

from __future__ import annotations

import attrs
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import KdlabError, hookimpl


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


@attrs.frozen(kw_only=True)
class ResNetConfig:
    cifar_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for 32x32 inputs


@attrs.frozen(kw_only=True)
class ViTConfig:
    patch_size: int = field(default=2, validator=v.ge(1))
    dim: int = field(default=64, validator=v.ge(1))
    depth: int = field(default=4, validator=v.ge(1))
    heads: int = field(default=4, validator=v.ge(1))
    mlp_dim: int = field(default=128, validator=v.ge(1))
    dropout: float = field(default=0.0, validator=[v.ge(0), v.lt(1)])

    @dim.validator
    def _divisible(self, _attr, value):
        if value % self.heads:
            raise ValueError(f"must be divisible by heads ({self.heads}), got {value}")


def vit(config: ViTConfig, in_channels: int, size: int, num_classes: int) -> nn.Module:
    import torchvision

    if size % config.patch_size:
        raise KdlabError(f"model.patch_size {config.patch_size} does not divide the image size {size}")
    model = torchvision.models.VisionTransformer(
        image_size=size, patch_size=config.patch_size, num_layers=config.depth, num_heads=config.heads,
        hidden_dim=config.dim, mlp_dim=config.mlp_dim, dropout=config.dropout, num_classes=num_classes,
    )
    if in_channels != 3:
        model.conv_proj = nn.Conv2d(in_channels, config.dim, config.patch_size, stride=config.patch_size)
    return model


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


def resnet(depth: int, config: ResNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    if config.cifar_stem or in_channels != 3:
        stride, kernel = (1, 3) if config.cifar_stem else (2, 7)
        model.conv1 = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=kernel // 2, bias=False)
    if config.cifar_stem:
        model.maxpool = nn.Identity()
    return model


class Models:
    default_enabled = True

    @hookimpl
    def kdlab_model_configs(self):
        return {"cnn": CompactCNNConfig, "resnet18": ResNetConfig, "resnet50": ResNetConfig, "vit": ViTConfig}

    @hookimpl(trylast=True)
    def kdlab_build_model(self, spec, data):
        channels, size = data.input_shape[0], min(data.input_shape[1:])
        if spec.arch == "cnn":
            return CompactCNN(spec.config, channels, size, data.num_classes)
        if spec.arch in ("resnet18", "resnet50"):
            return resnet(int(spec.arch[6:]), spec.config, channels, data.num_classes)
        if spec.arch == "vit":
            return vit(spec.config, channels, size, data.num_classes)
        return None
