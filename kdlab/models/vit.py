"""A small vision transformer (torchvision's VisionTransformer) as a cross-architecture teacher
(seed 003). Tap points: ``encoder`` (all tokens after the final layer norm, class token first)
and ``encoder.layers.encoder_layer_<i>``."""

from __future__ import annotations

import attrs
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab.engine.errors import KdlabError


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


def build(config: ViTConfig, data) -> nn.Module:
    return vit(config, data.input_shape[0], min(data.input_shape[1:]), data.num_classes)


ARCH = (ViTConfig, build)  # the `kdlab.models` entry point: config class, builder
