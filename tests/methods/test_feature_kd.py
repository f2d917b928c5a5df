from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.methods.feature_kd import feature_hint_loss, make_adapter
from kdlab.methods.feature_pairs import tokens_to_map


def test_conv1x1_adapter_between_maps_of_different_width_and_size():
    s, t = torch.randn(2, 4, 4, 4), torch.randn(2, 16, 2, 2)
    adapter = make_adapter(s, t, "conv1x1")
    assert isinstance(adapter, nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (4, 16)
    expected = torch.nn.functional.mse_loss(torch.nn.functional.adaptive_avg_pool2d(adapter(s), 2), t)
    assert feature_hint_loss(s, t, adapter).item() == pytest.approx(expected.item(), rel=1e-6)


def test_identity_adapter_on_equal_features_gives_zero():
    x = torch.randn(3, 5)
    adapter = nn.Linear(5, 5)
    with torch.no_grad():
        adapter.weight.copy_(torch.eye(5))
        adapter.bias.zero_()
    assert feature_hint_loss(x, x, adapter).item() == pytest.approx(0.0, abs=1e-12)


def test_vit_tokens_become_a_map_without_the_class_token():
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float).reshape(2, 17, 3)
    grid = tokens_to_map(tokens)
    assert grid.shape == (2, 3, 4, 4)
    assert grid[0, :, 0, 0].tolist() == tokens[0, 1].tolist()  # first patch token, not the class token
    s = torch.randn(2, 8, 2, 2)
    adapter = make_adapter(s, tokens)  # the regressor: a 2x2 map up to the 4x4 grid
    assert isinstance(adapter[0], nn.ConvTranspose2d) and adapter[0].out_channels == 3
    assert adapter(s).shape == (2, 3, 4, 4)
    assert feature_hint_loss(s, tokens, adapter).dim() == 0


@pytest.mark.parametrize(("size", "conv"), [(8, nn.Conv2d), (2, nn.ConvTranspose2d), (5, nn.Conv2d), (4, nn.Conv2d)])
def test_the_regressor_maps_the_student_map_onto_the_teachers_shape(size, conv):
    s, t = torch.randn(3, 4, size, size), torch.randn(3, 6, 4, 4)
    adapter = make_adapter(s, t)
    assert [type(m) for m in adapter] == [conv, nn.BatchNorm2d, nn.ReLU]
    assert adapter(s).shape == t.shape
    assert feature_hint_loss(s, t, adapter).item() == pytest.approx(((adapter(s) - t) ** 2).mean().item(), rel=1e-6)


def test_a_regressor_cannot_grow_a_map_more_than_twice():
    from kdlab import KdlabError

    with pytest.raises(KdlabError, match="no regressor from a 1x1"):
        make_adapter(torch.randn(2, 4, 1, 1), torch.randn(2, 6, 4, 4))


def test_vector_and_map_mix_uses_a_linear_adapter():
    adapter = make_adapter(torch.randn(2, 6), torch.randn(2, 12, 3, 3))
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (6, 12)
