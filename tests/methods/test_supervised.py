from __future__ import annotations

import math

import pytest
import torch

from kdlab.methods.supervised import supervised_loss


def test_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2])
    first = -math.log(math.exp(2) / (math.exp(2) + 2))
    second = -math.log(1 / 3)
    assert supervised_loss(logits, targets).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_label_smoothing_changes_the_loss():
    logits = torch.tensor([[5.0, 0.0]])
    targets = torch.tensor([0])
    plain = supervised_loss(logits, targets).item()
    smooth = supervised_loss(logits, targets, label_smoothing=0.2).item()
    # smoothing 0.2 over 2 classes: target (0.9, 0.1)
    logp = torch.log_softmax(logits, 1)[0]
    assert smooth == pytest.approx(-(0.9 * logp[0] + 0.1 * logp[1]).item(), rel=1e-6)
    assert smooth > plain


def test_classes_restricts_the_loss_to_those_samples():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    targets = torch.tensor([0, 2, 1])
    per_sample = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    got = supervised_loss(logits, targets, classes=(0, 2))
    assert got.item() == pytest.approx(((per_sample[0] + per_sample[1]) / 2).item())
    none = supervised_loss(logits, targets, classes=(5,))
    assert none.item() == 0.0


def test_weight_scales_the_term():
    from kdlab.methods.supervised import Supervised, SupervisedConfig

    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    batch = type("B", (), {"targets": targets})()
    out = type("O", (), {"logits": logits})()
    plain = Supervised(SupervisedConfig()).kdlab_loss_terms(None, batch, out)["ce"]
    scaled = Supervised(SupervisedConfig(weight=0.2)).kdlab_loss_terms(None, batch, out)["ce"]
    assert scaled.item() == pytest.approx(0.2 * plain.item(), rel=1e-6)
