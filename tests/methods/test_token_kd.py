"""Token-level divergences and the language-modelling loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.methods.lm import lm_loss
from kdlab.methods.token_kd import token_divergence, token_kd_loss

P_T = [0.7, 0.2, 0.1]  # teacher
P_S = [0.4, 0.4, 0.2]  # student


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def mix(w, p, q):
    return [w * a + (1 - w) * b for a, b in zip(p, q)]


def logits(p):
    return torch.tensor(p).log().view(1, 1, 3)


@pytest.mark.parametrize(("divergence", "expected"), [
    ("forward_kl", kl(P_T, P_S)),
    ("reverse_kl", kl(P_S, P_T)),
    ("jsd", 0.3 * kl(P_T, mix(0.3, P_T, P_S)) + 0.7 * kl(P_S, mix(0.3, P_T, P_S))),
    ("skew_kl", kl(P_T, mix(0.2, P_T, P_S))),
    ("skew_rkl", kl(P_S, mix(0.2, P_S, P_T))),
])
def test_each_divergence_matches_its_formula(divergence, expected):
    got = token_divergence(logits(P_S), logits(P_T), divergence=divergence, beta=0.3, alpha=0.2)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert token_divergence(logits(P_S), logits(P_S), divergence=divergence, beta=0.3, alpha=0.2).item() == pytest.approx(0, abs=1e-6)


def test_jsd_approaches_scaled_forward_and_reverse_kl_at_the_ends():
    small = token_divergence(logits(P_S), logits(P_T), divergence="jsd", beta=1e-4).item()
    large = token_divergence(logits(P_S), logits(P_T), divergence="jsd", beta=1 - 1e-4).item()
    assert small / 1e-4 == pytest.approx(kl(P_T, P_S), rel=1e-2)
    assert large / 1e-4 == pytest.approx(kl(P_S, P_T), rel=1e-2)


def test_temperature_softens_both_and_scales_by_its_square():
    t = 2.0
    soft = lambda p: [x ** (1 / t) / sum(y ** (1 / t) for y in p) for x in p]  # noqa: E731
    got = token_divergence(logits(P_S), logits(P_T), divergence="forward_kl", temperature=t).item()
    assert got == pytest.approx(t**2 * kl(soft(P_T), soft(P_S)), rel=1e-5)


def test_masked_positions_do_not_count():
    s = torch.cat([logits(P_S), logits(P_T)], 1)  # token 2: student equals teacher
    t = torch.cat([logits(P_T), logits(P_T)], 1)
    both = token_kd_loss(s, t, torch.tensor([[True, True]]), divergence="forward_kl").item()
    first = token_kd_loss(s, t, torch.tensor([[True, False]]), divergence="forward_kl").item()
    assert first == pytest.approx(kl(P_T, P_S), rel=1e-5) and both == pytest.approx(first / 2, rel=1e-5)


def test_lm_loss_averages_cross_entropy_over_valid_targets():
    x = torch.cat([logits(P_S), logits(P_T), logits(P_T)], 1)
    targets = torch.tensor([[0, -1, 2]])
    assert lm_loss(x, targets).item() == pytest.approx(-(math.log(0.4) + math.log(0.1)) / 2, rel=1e-5)
