"""The CIFAR table architectures: parameter counts as published, 32x32 inputs, tap points."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kdlab.models import cifar

# Exact counts with 100 classes. They equal the counts of RepDistiller's definitions
# (HobbitLong/RepDistiller, models/resnet.py, wrn.py, vgg.py with batch norm, as its model_dict
# maps vgg8 and vgg13), which the CRD, ReviewKD and DKD tables print rounded to 0.01 M:
# resnet20 0.28, resnet56 0.86, resnet110 1.74, resnet8x4 1.23, resnet32x4 7.43, wrn_16_2 0.70,
# wrn_40_1 0.57, wrn_40_2 2.25 (2,255,156 truncated), vgg8 3.96 (3,965,028 truncated), vgg13 9.46,
# MobileNetV2 (mobile_half) 0.81, ShuffleNetV1 0.95, ShuffleNetV2 1.36. By hand, vgg8:
# convs with bias and BN 3-64, 64-128, 128-256, 256-512, 512-512 (1,920 + 74,112 + 295,680 +
# 1,181,184 + 2,360,832) + the classifier 51,300.
COUNTS = {
    "resnet20": 278_324, "resnet56": 861_620, "resnet110": 1_736_564, "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860, "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028, "vgg13": 9_462_180, "mobilenetv2": 812_836, "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
}
PUBLISHED_M = {"resnet20": 0.28, "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43,
               "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.25, "vgg8": 3.96, "vgg13": 9.46,
               "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36}
DATA = SimpleNamespace(input_shape=(3, 32, 32), num_classes=100)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_are_the_published_ones(name):
    build, settings = cifar.TABLE[name]
    model = build(settings, DATA)
    count = sum(p.numel() for p in model.parameters())
    assert count == COUNTS[name]
    assert abs(count / 1e6 - PUBLISHED_M[name]) < 0.01
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_registered_by_their_table_names_and_generic_forms(catalogue):
    for name in [*COUNTS, "cifar_resnet", "wrn", "vgg_bn"]:
        assert name in catalogue.models
    generic = cifar.build_cifar_resnet(cifar.CifarResNetConfig(depth=56), DATA)
    assert sum(p.numel() for p in generic.parameters()) == COUNTS["resnet56"]


@pytest.mark.parametrize(("name", "taps"), [("resnet8x4", ("layer3", "pool")), ("wrn_16_2", ("block3", "pool")),
                                            ("vgg8", ("block4", "pool")), ("shufflenetv2", ("layer3", "pool")),
                                            ("mobilenetv2", ("blocks.6", "pool"))])
def test_tap_points_give_the_last_map_and_the_embedding(name, taps):
    build, settings = cifar.TABLE[name]
    model = build(settings, DATA)
    modules = dict(model.named_modules())
    seen = {}
    for tap in taps:
        modules[tap].register_forward_hook(lambda _m, _i, out, tap=tap: seen.__setitem__(tap, out))
    model(torch.zeros(2, 3, 32, 32))
    side = {"vgg8": 4, "shufflenetv2": 4, "mobilenetv2": 2}.get(name, 8)
    assert seen[taps[0]].shape[-2:] == (side, side)
    assert seen[taps[1]].dim() == 2 and seen[taps[1]].shape[1] == model.fc.in_features


def test_bad_depths_are_recipe_errors(write_recipe, catalogue):
    from kdlab.engine.errors import RecipeError
    from kdlab.engine.recipe import load_recipe
    from tests.conftest import TINY

    bad = TINY.replace('model = { arch = "cnn", channels = [8, 16] }', 'model = { arch = "cifar_resnet", depth = 21 }')
    with pytest.raises(RecipeError, match=r"depth: must be 6n \+ 2"):
        load_recipe(write_recipe(bad), catalogue)
