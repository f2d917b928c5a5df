from __future__ import annotations

import torch

from kdlab.models.cnn import CompactCNN, CompactCNNConfig
from kdlab.models.resnet import ResNetConfig, resnet


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_compact_cnn_shapes_and_pooling_stop():
    model = CompactCNN(CompactCNNConfig(channels=(4, 8, 16)), 1, 8, 10)
    feats = {}
    model.blocks[2].register_forward_hook(lambda m, i, o: feats.update(b2=o.shape))
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert feats["b2"] == (3, 16, 2, 2)  # 8 -> 4 -> 2, then no pooling below 4 pixels


def test_separable_and_se_change_parameter_count_as_designed():
    plain = CompactCNN(CompactCNNConfig(channels=(8, 16)), 1, 8, 10)
    sep = CompactCNN(CompactCNNConfig(channels=(8, 16), separable=True), 1, 8, 10)
    # second block: 3x3 conv 8->16 (1152 weights) becomes depthwise 3x3 (72) + pointwise 8->16 (128)
    assert _params(plain) - _params(sep) == 1152 - (72 + 128)
    se = CompactCNN(CompactCNNConfig(channels=(8, 16), se=True, se_reduction=4), 1, 8, 10)
    # SE on 8 channels: 8->2->8 convs with bias (16+2 + 16+8); on 16: 16->4->16 (64+4 + 64+16)
    assert _params(se) - _params(plain) == (16 + 2 + 16 + 8) + (64 + 4 + 64 + 16)


def test_resnet_cifar_stem_keeps_resolution():
    model = resnet(18, ResNetConfig(cifar_stem=True), 3, 100)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    gray = resnet(18, ResNetConfig(), 1, 10)
    assert gray.eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
