from __future__ import annotations

import pytest
import torch

from kdlab.methods.triplet_ae import triplet_loss


def test_batch_hard_by_hand():
    codes = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # squared distances to the hardest positive / nearest negative:
    # a0: 1 / 9, a1: 1 / 4, a2: 1 / 4, a3: 1 / 9
    # margin 1: every max(0, 1 + dp - dn) is 0; margin 5: 0, 2, 2, 0 -> mean 1
    assert triplet_loss(codes, labels, margin=1.0).item() == 0.0
    assert triplet_loss(codes, labels, margin=5.0).item() == pytest.approx(1.0)


def test_batch_all_by_hand():
    codes = torch.tensor([[0.0], [1.0], [3.0]])
    labels = torch.tensor([0, 0, 1])
    # valid triplets (a, p, n): (0, 1, 2): 4 + 1 - 9 -> 0 ; (1, 0, 2): 4 + 1 - 4 = 1 -> mean 0.5
    assert triplet_loss(codes, labels, margin=4.0, mining="batch_all").item() == pytest.approx(0.5)


def test_codes_of_several_teachers_in_one_batch():
    # two teachers' codes for the same 2 samples: same class across teachers are positives
    teacher_a = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    teacher_b = torch.tensor([[0.1, 0.0], [5.0, 5.1]])
    codes = torch.cat([teacher_a, teacher_b])
    labels = torch.tensor([0, 1]).repeat(2)
    assert triplet_loss(codes, labels, margin=1.0).item() == 0.0  # aligned spaces
    misaligned = torch.cat([teacher_a, teacher_b.flip(0)])
    assert triplet_loss(misaligned, labels, margin=1.0).item() > 10


def test_no_valid_triplet_gives_zero():
    codes = torch.randn(3, 4, requires_grad=True)
    loss = triplet_loss(codes, torch.tensor([0, 1, 2]), margin=1.0)
    assert loss.item() == 0.0
    loss.backward()
