"""CTC distillation strategies against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.methods.ctc import (align, blank_filtered_kd, blank_weighted_kd, blank_weights, ctc_loss, frame_kl,
                               posterior_kd)

LN = math.log
# teacher frames: p = [.9, .1] (blank), p = [.25, .75] (phoneme 1), then a padding frame
TEACHER = torch.tensor([[[LN(9), 0.0], [0.0, LN(3)], [50.0, -50.0]]])
STUDENT = torch.zeros(1, 3, 2)  # p = [.5, .5] everywhere
VALID = torch.tensor([[True, True, False]])
KL0 = 0.9 * LN(1.8) + 0.1 * LN(0.2)  # 0.368064
KL1 = 0.25 * LN(0.5) + 0.75 * LN(1.5)  # 0.130812


def test_frame_kl_matches_definition_and_temperature():
    kl = frame_kl(STUDENT, TEACHER, 1.0)
    assert kl[0, :2].tolist() == pytest.approx([KL0, KL1], abs=1e-6)
    t = 3.0
    s, te = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    ref = F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(te / t, -1), reduction="none", log_target=True).sum(-1)
    assert torch.allclose(frame_kl(s, te, t), ref * t * t, atol=1e-5)


def test_posterior_kd_averages_valid_frames_only():
    assert posterior_kd(STUDENT, TEACHER, VALID, 1.0).item() == pytest.approx((KL0 + KL1) / 2, abs=1e-6)


def test_blank_filtered_kd():
    # only frame 1 has a non-blank argmax
    assert blank_filtered_kd(STUDENT, TEACHER, VALID, 1.0).item() == pytest.approx(KL1, abs=1e-6)
    # keeping one neighbour either side brings frame 0 back, but never the padding frame
    assert blank_filtered_kd(STUDENT, TEACHER, VALID, 1.0, keep_neighbours=1).item() == pytest.approx((KL0 + KL1) / 2, abs=1e-6)
    # an all-blank teacher: nothing to distil, a zero loss (not NaN)
    all_blank = torch.tensor([[[5.0, 0.0], [5.0, 0.0], [5.0, 0.0]]])
    assert blank_filtered_kd(STUDENT, all_blank, VALID, 1.0).item() == 0.0


def test_blank_weighted_kd():
    # w = 1 - p_blank: 0.1 and 0.75
    expected = (0.1 * KL0 + 0.75 * KL1) / 0.85
    assert blank_weighted_kd(STUDENT, TEACHER, VALID, 1.0).item() == pytest.approx(expected, abs=1e-6)
    w = blank_weights(TEACHER, VALID, gamma=2.0, min_weight=0.05)
    assert w[0].tolist() == pytest.approx([0.05, 0.75**2, 0.0], abs=1e-6)  # floor; square; padding 0
    # gamma 0 weights every valid frame equally: posterior KD
    assert blank_weighted_kd(STUDENT, TEACHER, VALID, 1.0, gamma=0.0).item() == pytest.approx((KL0 + KL1) / 2, abs=1e-6)
    all_blank = torch.tensor([[[30.0, -30.0]] * 3])
    assert blank_weighted_kd(STUDENT, all_blank, VALID, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_truncates_pools_and_masks():
    s, t, valid = align(torch.zeros(2, 5, 3), torch.tensor([5, 2]), torch.zeros(2, 4, 3), torch.tensor([4, 4]))
    assert s.shape == t.shape == (2, 4, 3)
    assert valid.tolist() == [[True] * 4, [True, True, False, False]]
    # a 40 ms student: teacher probabilities averaged over pairs of 20 ms frames
    teacher = torch.log(torch.tensor([[[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.2, 0.8]]]))
    s, t, valid = align(torch.zeros(1, 2, 2), torch.tensor([2]), teacher, torch.tensor([3]), pool=2)
    assert torch.allclose(t.softmax(-1), torch.tensor([[[0.7, 0.3], [0.2, 0.8]]]), atol=1e-5)
    assert valid.tolist() == [[True, True]]


def test_ctc_loss_ignores_padding_and_prefers_the_right_path():
    # three frames spelling [1, 2]: a model that says 1, 2, blank is better than one that says 2, 1
    good = torch.tensor([[[0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]]])
    bad = torch.tensor([[[0.0, 0.0, 9.0], [0.0, 9.0, 0.0], [9.0, 0.0, 0.0]]])
    targets = torch.tensor([[1, 2, -1]])
    lengths = torch.tensor([3])
    assert ctc_loss(good, lengths, targets) < 0.01 < ctc_loss(bad, lengths, targets)
    padded = torch.cat([good, torch.randn(1, 4, 3)], dim=1)
    assert ctc_loss(padded, lengths, targets).item() == pytest.approx(ctc_loss(good, lengths, targets).item())
