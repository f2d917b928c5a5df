from __future__ import annotations

import math

import pytest
import torch

from kdlab.methods.logit_kd import hinton_kd_loss


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(z):
    e = [math.exp(x) for x in z]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_hinton_loss_matches_hand_computed(temperature):
    student = [[0.0, 0.0], [1.0, -1.0]]
    teacher = [[math.log(3.0), 0.0], [0.0, 2.0]]
    expected = sum(
        _kl(_softmax([t / temperature for t in tr]), _softmax([s / temperature for s in sr]))
        for sr, tr in zip(student, teacher)
    ) / 2 * temperature**2
    got = hinton_kd_loss(torch.tensor(student), torch.tensor(teacher), temperature=temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_value_for_t1_by_hand():
    # teacher probabilities (0.75, 0.25), student (0.5, 0.5): KL = 0.75 ln 1.5 + 0.25 ln 0.5
    got = hinton_kd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), temperature=1.0)
    assert got.item() == pytest.approx(0.1308120, abs=1e-6)


def test_zero_when_student_equals_teacher_and_gradient_flows_to_student_only():
    s = torch.randn(5, 7, requires_grad=True)
    t = s.detach().clone()
    assert hinton_kd_loss(s, t, temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)
    loss = hinton_kd_loss(s, torch.randn(5, 7), temperature=3.0)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_separate_kd_and_ce_weights_give_what_alpha_cannot():
    """Logit standardisation's CIFAR-100 setting, 9 KD + 0.1 CE: the terms the plugin returns."""
    from types import SimpleNamespace

    from kdlab import ModelOutput
    from kdlab.methods.logit_kd import LogitKD, LogitKDConfig

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    batch = SimpleNamespace(targets=y)
    cfg = LogitKDConfig(temperature=2.0, kd_weight=9.0, ce_weight=0.1)
    terms = LogitKD(cfg).kdlab_loss_terms(None, batch, ModelOutput(s), [ModelOutput(t)])
    kd = hinton_kd_loss(s, t, temperature=2.0)
    assert terms["kd"].item() == pytest.approx(9.0 * kd.item(), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(0.1 * torch.nn.functional.cross_entropy(s, y).item(), rel=1e-6)
    # alpha alone as before; a zero ce_weight drops the term
    assert LogitKDConfig(alpha=0.3).weights() == (0.3, pytest.approx(0.7))
    assert "ce" not in LogitKD(LogitKDConfig(kd_weight=1.0, ce_weight=0.0)).kdlab_loss_terms(
        None, batch, ModelOutput(s), [ModelOutput(t)])
