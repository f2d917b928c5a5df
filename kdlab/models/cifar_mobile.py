"""The mobile students of the CIFAR distillation tables, for 32x32 inputs: MobileNetV2 (expansion
6, width 0.5, RepDistiller's ``mobile_half``), ShuffleNetV1 (3 groups, widths 240/480/960) and
ShuffleNetV2 (size 1x), built to the layer structure of RepDistiller's definitions so their
parameter counts are the published ones (0.81 M, 0.95 M, 1.36 M; pinned in
``tests/models/test_cifar.py``). torchvision's versions are the ImageNet ones (a stride-2 stem
and max-pool that leave 1x1 maps at 32x32; MobileNetV2 without the first block's expansion
conv), hence these. Channel shuffles use ``torch.nn.ChannelShuffle``. Tap points: ``blocks.<i>``
(MobileNetV2), ``layer1``..``layer3`` (ShuffleNets), ``pool`` (the embedding) in all.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.conv = nn.Sequential(_conv_bn(cin, mid, 1), _conv_bn(mid, mid, 3, stride, groups=mid),
                                  _conv_bn(mid, cout, 1, relu=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
                (None, 160, 3, 2), (None, 320, 1, 1)]  # expansion (None: T), channels, blocks, stride

    def __init__(self, in_channels: int, num_classes: int, expand: int = 6, width: float = 0.5):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = _conv_bn(in_channels, cin, 3, 2)
        blocks = []
        for t, c, n, s in self.SETTINGS:
            cout = int(c * width)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t or expand))
                cin = cout
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn(cin, last, 1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv2(self.blocks(self.conv1(x)))))


class ShuffleV1Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        g = 1 if cin == 24 else groups  # the first block's input (the stem's 24 channels) is not grouped
        self.conv1 = _conv_bn(cin, mid, 1, groups=g)
        self.shuffle = nn.ChannelShuffle(g)
        self.conv2 = _conv_bn(mid, mid, 3, stride, groups=mid, relu=False)
        self.conv3 = _conv_bn(mid, cout, 1, groups=groups, relu=False)
        self.down = stride == 2
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if self.down else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.conv3(torch.relu(self.conv2(self.shuffle(self.conv1(x)))))
        res = self.shortcut(x)
        return self.relu(torch.cat([out, res], 1) if self.down else out + res)


class ShuffleNetV1(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths=(240, 480, 960), blocks=(4, 8, 4), groups: int = 3):
        super().__init__()
        self.stem = _conv_bn(in_channels, 24, 1)
        cin, layers = 24, []
        for width, n in zip(widths, blocks):
            stage = []
            for i in range(n):  # the first block concatenates its pooled input: it adds width - cin
                stage.append(ShuffleV1Block(cin, width - (cin if i == 0 else 0), 2 if i == 0 else 1, groups))
                cin = width
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))))


class ShuffleV2Block(nn.Module):
    """Half the channels pass through, the other half go 1x1, 3x3 depthwise, 1x1; then shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(_conv_bn(half, half, 1), _conv_bn(half, half, 3, groups=half, relu=False),
                                    _conv_bn(half, half, 1))
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x):
        keep, rest = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([keep, self.branch(rest)], 1))


class ShuffleV2Down(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(_conv_bn(cin, cin, 3, 2, groups=cin, relu=False), _conv_bn(cin, mid, 1))
        self.right = nn.Sequential(_conv_bn(cin, mid, 1), _conv_bn(mid, mid, 3, 2, groups=mid, relu=False),
                                   _conv_bn(mid, mid, 1))
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x):
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths=(116, 232, 464, 1024), blocks=(3, 7, 3)):
        super().__init__()
        self.stem = _conv_bn(in_channels, 24, 1)
        cin, layers = 24, []
        for width, n in zip(widths[:3], blocks):
            layers.append(nn.Sequential(ShuffleV2Down(cin, width), *[ShuffleV2Block(width) for _ in range(n)]))
            cin = width
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = _conv_bn(widths[2], widths[3], 1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv2(self.layer3(self.layer2(self.layer1(self.stem(x)))))))
