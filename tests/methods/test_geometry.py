from __future__ import annotations

import math

import pytest
import torch

from kdlab.methods.geometry import class_centres, geometry_distance, geometry_loss, similarity_matrix


def test_centres_and_missing_class():
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 2])
    centres, present = class_centres(feats, labels, 3)
    assert centres.tolist() == [[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]
    assert present.tolist() == [True, False, True]


def test_loss_by_hand_with_different_widths_and_a_missing_class():
    # student (2-d): class 0 centre (1, 0), class 1 centre (1, 1) -> cosine 1/sqrt(2)
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # teacher (3-d): class 0 centre (1, 0, 0), class 1 centre (0, 1, 0) -> cosine 0
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    labels = torch.tensor([0, 1])  # class 2 of 3 is absent from the batch: left out
    loss = geometry_loss(student, teacher, labels, num_classes=3)
    # two off-diagonal entries, each differing by 1/sqrt(2): mean of squares = 1/2
    assert loss.item() == pytest.approx(0.5, rel=1e-6)
    l1 = geometry_loss(student, teacher, labels, num_classes=3, distance="l1")
    assert l1.item() == pytest.approx(1 / math.sqrt(2), rel=1e-6)


def test_single_class_batch_gives_zero_with_gradient_path():
    s = torch.randn(4, 3, requires_grad=True)
    loss = geometry_loss(s, torch.randn(4, 5), torch.zeros(4, dtype=torch.long), num_classes=10)
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None


def test_same_geometry_is_zero_whatever_the_scale_and_rotation():
    c = torch.randn(5, 4)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4))
    assert geometry_distance(c, 3.0 * c @ rotation).item() == pytest.approx(0.0, abs=1e-10)
    assert similarity_matrix(c).diagonal().allclose(torch.ones(5))


def test_maps_are_pooled_to_vectors():
    s = torch.randn(6, 8, 2, 2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert geometry_loss(s, s.mean(dim=(2, 3)), labels, num_classes=3).item() == pytest.approx(0.0, abs=1e-6)
