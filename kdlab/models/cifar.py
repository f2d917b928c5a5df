"""The CIFAR architectures of the distillation tables (CRD/RepDistiller, mdistiller, DKD):
ResNets for 32x32 inputs (resnet20, resnet56, resnet110, resnet8x4, resnet32x4), wide ResNets
(wrn_16_2, wrn_40_1, wrn_40_2), VGG with batch norm (vgg8, vgg13), and the mobile students
(mobilenetv2, shufflenetv1, shufflenetv2: ``cifar_mobile.py``), built to the same layer
structure as RepDistiller's definitions so their parameter counts are the published ones
(``tests/models/test_cifar.py`` pins them). Written here rather than taken from torchvision,
whose ResNets and VGGs are the ImageNet ones (a 7x7 stem, four stages, 4096-wide classifiers).

The generic forms are registered too: ``cifar_resnet`` (``depth`` = 6n + 2, ``filters``), ``wrn``
(``depth`` = 6n + 4, ``widen``) and ``vgg_bn`` (``layers`` 8, 11, 13, 16 or 19). Tap points by
module name: ``layer1``..``layer3`` (ResNets), ``block1``..``block3`` (WRNs), ``block0``..
``block4`` (VGG), and ``pool`` (the pooled embedding before the classifier ``fc``) in all; a
ResNet block's output before its last ReLU is ``layer<s>.<i>.preact`` (pre-activation taps, as
OFD and AB use; a WRN block's output is already before the next block's ReLU).
"""

from __future__ import annotations

import attrs
from attrs import field
from attrs import validators as v
from torch import nn


def _resnet_depth(_inst, _attr, value):
    if value < 8 or (value - 2) % 6:
        raise ValueError(f"must be 6n + 2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {value}")


def _wrn_depth(_inst, _attr, value):
    if value < 10 or (value - 4) % 6:
        raise ValueError(f"must be 6n + 4 with n >= 1 (10, 16, 28, 40, ...), got {value}")


@attrs.frozen(kw_only=True)
class CifarResNetConfig:
    depth: int = field(default=20, validator=_resnet_depth)
    filters: tuple[int, int, int, int] = (16, 16, 32, 64)  # stem, then the three stages


@attrs.frozen(kw_only=True)
class WRNConfig:
    depth: int = field(default=16, validator=_wrn_depth)
    widen: int = field(default=2, validator=v.ge(1))
    dropout: float = field(default=0.0, validator=[v.ge(0), v.lt(1)])


VGG_LAYERS = {  # channels of the five blocks, as in RepDistiller (configurations S, A, B, D, E)
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


@attrs.frozen(kw_only=True)
class VGGConfig:
    layers: int = field(default=13, validator=v.in_(sorted(VGG_LAYERS)))


@attrs.frozen(kw_only=True)
class TableModelConfig:
    """The named architectures of the tables take no settings: the name fixes them."""


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.preact = nn.Identity()  # a tap point: the block's output before its last ReLU

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.preact(self.bn2(self.conv2(out)) + self.shortcut(x)))


class CifarResNet(nn.Module):
    def __init__(self, config: CifarResNetConfig, in_channels: int, num_classes: int):
        super().__init__()
        n, f = (config.depth - 2) // 6, config.filters
        self.conv1 = nn.Conv2d(in_channels, f[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(f[0])
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], f[0]
        for stage, cout in enumerate(f[1:]):
            blocks = [BasicBlock(cin if i == 0 else cout, cout, 2 if stage and i == 0 else 1) for i in range(n)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(f[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(x)))))


class WideBlock(nn.Module):
    """Pre-activation block of the wide ResNets: BN-ReLU-conv, BN-ReLU-(dropout)-conv."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.equal = cin == cout
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        act = self.relu(self.bn1(x))
        out = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(act)))))
        # as published: a shape-changing block's shortcut starts from the activated input
        return out + (x if self.equal else self.shortcut(act))


class WideResNet(nn.Module):
    def __init__(self, config: WRNConfig, in_channels: int, num_classes: int):
        super().__init__()
        n, k = (config.depth - 4) // 6, config.widen
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for stage in range(3):
            cin, cout = widths[stage], widths[stage + 1]
            blocks.append(nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, (1 if stage == 0 else 2) if i == 0 else 1,
                                                    config.dropout) for i in range(n)]))
        self.block1, self.block2, self.block3 = blocks
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn(x))))


class VGG(nn.Module):
    """Five conv blocks (3x3 conv with bias, BN, ReLU), max-pooling after the first three (the
    fourth pool is skipped at 32x32, as published), global average pooling, one linear layer."""

    def __init__(self, config: VGGConfig, in_channels: int, num_classes: int):
        super().__init__()
        cin = in_channels
        for i, widths in enumerate(VGG_LAYERS[config.layers]):
            layers = []
            for cout in widths:
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            setattr(self, f"block{i}", nn.Sequential(*layers))
        self.maxpool = nn.MaxPool2d(2, 2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        for i in range(3):
            x = self.maxpool(getattr(self, f"block{i}")(x))
        return self.fc(self.pool(self.block4(self.block3(x))))


def build_cifar_resnet(config: CifarResNetConfig, data) -> nn.Module:
    return CifarResNet(config, data.input_shape[0], data.num_classes)


def build_wrn(config: WRNConfig, data) -> nn.Module:
    return WideResNet(config, data.input_shape[0], data.num_classes)


def build_vgg(config: VGGConfig, data) -> nn.Module:
    return VGG(config, data.input_shape[0], data.num_classes)


# name -> (builder, its settings): the architectures as the tables name them
TABLE = {
    "resnet20": (build_cifar_resnet, CifarResNetConfig(depth=20)),
    "resnet56": (build_cifar_resnet, CifarResNetConfig(depth=56)),
    "resnet110": (build_cifar_resnet, CifarResNetConfig(depth=110)),
    "resnet8x4": (build_cifar_resnet, CifarResNetConfig(depth=8, filters=(32, 64, 128, 256))),
    "resnet32x4": (build_cifar_resnet, CifarResNetConfig(depth=32, filters=(32, 64, 128, 256))),
    "wrn_16_2": (build_wrn, WRNConfig(depth=16, widen=2)),
    "wrn_40_1": (build_wrn, WRNConfig(depth=40, widen=1)),
    "wrn_40_2": (build_wrn, WRNConfig(depth=40, widen=2)),
    "vgg8": (build_vgg, VGGConfig(layers=8)),
    "vgg13": (build_vgg, VGGConfig(layers=13)),
}


def _mobile(cls_name: str):
    def build(_settings, data) -> nn.Module:
        from kdlab.models import cifar_mobile

        return getattr(cifar_mobile, cls_name)(data.input_shape[0], data.num_classes)

    return build


TABLE.update({  # the mobile students (kdlab/models/cifar_mobile.py)
    "mobilenetv2": (_mobile("MobileNetV2"), None),
    "shufflenetv1": (_mobile("ShuffleNetV1"), None),
    "shufflenetv2": (_mobile("ShuffleNetV2"), None),
})


def table_builder(name: str):
    build, settings = TABLE[name]
    return lambda _config, data: build(settings, data)


# the `kdlab.models` entry points: config class, builder
CIFAR_RESNET = (CifarResNetConfig, build_cifar_resnet)
WRN = (WRNConfig, build_wrn)
VGG_BN = (VGGConfig, build_vgg)


def table(name: str):
    """The entry point of every architecture of :data:`TABLE` (resnet8x4, wrn_40_2, ...)."""
    return TableModelConfig, table_builder(name)
