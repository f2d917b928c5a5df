from __future__ import annotations

import math

import pytest
import torch

from kdlab.methods.contrastive import info_nce


def test_info_nce_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos(s0,t0)=1, cos(s0,t1)=1/sqrt2, cos(s1,t0)=0, cos(s1,t1)=1/sqrt2
    tau = 0.5
    r = 1 / math.sqrt(2)
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(r / tau)))
    l1 = -math.log(math.exp(r / tau) / (math.exp(0) + math.exp(r / tau)))
    assert info_nce(s, t, tau=tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_class_positives_average_over_same_class_teachers():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    labels = torch.tensor([0, 1, 0])
    logits = torch.nn.functional.normalize(s, dim=1) @ torch.nn.functional.normalize(t, dim=1).t()
    logp = torch.log_softmax(logits / 0.3, dim=1)
    expected = -((logp[0, 0] + logp[0, 2]) / 2 + logp[1, 1] + (logp[2, 0] + logp[2, 2]) / 2) / 3
    assert info_nce(s, t, tau=0.3, labels=labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_matching_embeddings_score_better_than_shuffled():
    z = torch.randn(16, 8)
    assert info_nce(z, z, tau=0.1) < info_nce(z, z[torch.randperm(16)], tau=0.1)
