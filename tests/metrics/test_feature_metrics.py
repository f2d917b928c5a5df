from __future__ import annotations

import math

import pytest
import torch

from kdlab.metrics.feature_metrics import geometry_preservation, linear_cka, pearson


def test_pearson_by_hand():
    # centred: x = (-1, 0, 1), y = (-7/3, -1/3, 8/3); x.y = 5, |x| = sqrt 2, |y| = sqrt(114) / 3
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])) == pytest.approx(15 / math.sqrt(228))
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


def test_geometry_preservation_is_one_for_the_same_geometry():
    feats = torch.randn(40, 6)
    labels = torch.arange(40) % 5
    rotation, _ = torch.linalg.qr(torch.randn(6, 6))
    gp, s_sim, t_sim = geometry_preservation(feats, 2 * feats @ rotation, labels, 5)
    assert gp == pytest.approx(1.0)
    assert s_sim.shape == (5, 5)
    gp_random, _, _ = geometry_preservation(feats, torch.randn(40, 9), labels, 5)
    assert gp_random < 0.99


def test_linear_cka_invariances_and_value():
    x = torch.randn(50, 4)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    assert linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0)
    # two centred 1-d features: CKA is the squared correlation
    a = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    b = torch.tensor([[1.0], [3.0], [2.0], [4.0]])
    r = pearson(a.flatten(), b.flatten())
    assert linear_cka(a, b) == pytest.approx(r**2)


def test_the_moments_summed_batch_by_batch_give_the_whole_split_metrics():
    from kdlab.metrics.feature_metrics import Moments

    torch.manual_seed(0)
    s, t = torch.randn(90, 6, 3, 3), torch.randn(90, 10) + 2
    t[:, :6] += 0.5 * s.mean(dim=(2, 3))  # related, so the metrics are not ~0
    labels = torch.arange(90) % 7
    labels[labels == 6] = 5  # a class absent from the split
    moments = Moments()
    for part in torch.arange(90).split(16):
        moments.add(s[part], t[part], labels[part], 7)
    gp, s_sim, _ = moments.geometry_preservation()
    gp_whole, s_sim_whole, _ = geometry_preservation(s, t, labels, 7)
    assert gp == pytest.approx(gp_whole, abs=1e-9) and s_sim.shape == (6, 6)
    assert torch.allclose(s_sim, s_sim_whole, atol=1e-9)
    assert moments.linear_cka() == pytest.approx(linear_cka(s, t), abs=1e-9)
    assert 0.05 < moments.linear_cka() < 0.99
