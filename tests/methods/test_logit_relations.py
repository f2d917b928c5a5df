"""DKD, DIST and logit standardisation: the pure losses against values computed by hand (plain
Python loops over small tensors), and each method's round trip through kdlab.testing."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.methods.dist import dist_loss
from kdlab.methods.dkd import dkd_terms, warmup_factor
from kdlab.methods.logit_kd import hinton_kd_loss, standardize
from kdlab.testing import check_method

S = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]]
T = [[2.0, 0.0, 1.0], [1.5, 0.5, 2.5]]
Y = [1, 2]


def _softmax(row, temp):
    e = [math.exp(x / temp) for x in row]
    return [x / sum(e) for x in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_dkd_splits_kd_into_target_and_non_target_terms():
    temp = 2.0
    tckd, nckd = [], []
    for s, t, y in zip(S, T, Y):
        ps, pt = _softmax(s, temp), _softmax(t, temp)
        tckd.append(_kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]]))
        others = [c for c in range(3) if c != y]
        hs = _softmax([s[c] for c in others], temp)
        ht = _softmax([t[c] for c in others], temp)
        nckd.append(_kl(ht, hs))
    got = dkd_terms(torch.tensor(S), torch.tensor(T), torch.tensor(Y), temperature=temp)
    assert got[0].item() == pytest.approx(temp**2 * sum(tckd) / 2, rel=1e-5)
    assert got[1].item() == pytest.approx(temp**2 * sum(nckd) / 2, rel=1e-5)
    # the identity of the paper: KD = TCKD + (1 - p_t of the target) * NCKD, sample by sample
    kd = hinton_kd_loss(torch.tensor(S[:1]), torch.tensor(T[:1]), temperature=temp)
    one = dkd_terms(torch.tensor(S[:1]), torch.tensor(T[:1]), torch.tensor(Y[:1]), temperature=temp)
    pt_y = _softmax(T[0], temp)[Y[0]]
    assert kd.item() == pytest.approx(one[0].item() + (1 - pt_y) * one[1].item(), rel=1e-5)


@pytest.mark.parametrize("margin", [20.0, 70.0, 90.0])
def test_dkd_target_term_keeps_its_gradient_at_large_target_margins(margin):
    """1 - p_y by subtraction is 0 in float32 once p_y rounds to 1 (a margin over about 17 after
    the temperature): TCKD's gradient vanished there. The float64 reference keeps it."""
    student = torch.tensor([[margin, 0.0, -1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[margin / 2, 1.0, 0.0, 0.5]])
    targets = torch.tensor([0])
    tckd, _ = dkd_terms(student, teacher, targets, temperature=4.0)
    (grad,) = torch.autograd.grad(tckd, student)
    s64 = student.detach().double().requires_grad_()
    log_ps, log_pt = torch.log_softmax(s64 / 4, -1), torch.log_softmax(teacher.double() / 4, -1)
    bs = torch.stack([log_ps[0, 0], torch.logsumexp(log_ps[0, 1:], 0)])
    bt = torch.stack([log_pt[0, 0], torch.logsumexp(log_pt[0, 1:], 0)])
    want = 16 * (bt.exp() * (bt - bs)).sum()
    (want_grad,) = torch.autograd.grad(want, s64)
    assert tckd.item() == pytest.approx(want.item(), rel=5e-3)  # float32 rounding of a small KL
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-3, atol=1e-3 * float(want_grad.abs().max()))


def test_dkd_warmup_ramps_per_epoch():
    assert [warmup_factor(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_dist_correlates_classes_within_samples_and_samples_within_classes():
    s3, t3 = [*S, [0.0, 1.0, -2.0]], [*T, [-1.0, 2.0, 0.3]]
    temp, beta, gamma = 3.0, 2.0, 0.5
    ps = [_softmax(r, temp) for r in s3]
    pt = [_softmax(r, temp) for r in t3]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ps, pt)) / 3
    cols = lambda m: [[row[c] for row in m] for c in range(3)]  # noqa: E731
    intra = 1 - sum(_pearson(a, b) for a, b in zip(cols(ps), cols(pt))) / 3
    got = dist_loss(torch.tensor(s3), torch.tensor(t3), temperature=temp, beta=beta, gamma=gamma)
    assert got.item() == pytest.approx(temp**2 * (beta * inter + gamma * intra), rel=1e-5)
    # the student's own probabilities are perfectly correlated with themselves
    assert dist_loss(torch.tensor(t3), torch.tensor(t3), temperature=temp, beta=1, gamma=1).item() == pytest.approx(0, abs=1e-5)


def test_standardize_z_scores_each_row():
    row = S[0]
    mean = sum(row) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in row) / 2)  # Bessel's correction
    got = standardize(torch.tensor(S))[0].tolist()
    assert got == pytest.approx([(x - mean) / std for x in row], rel=1e-5)
    # logits that differ by scale and shift give the same standardised KD target
    shifted = torch.tensor(T) * 3 + 7
    assert torch.allclose(standardize(shifted), standardize(torch.tensor(T)), atol=1e-5)


@pytest.mark.parametrize(("name", "config"), [("dkd", {"warmup_epochs": 2}), ("dist", {"standardize": True})])
def test_round_trip_alone_composed_and_resumed(name, config, tmp_path):
    check_method(name, config, workdir=tmp_path)


def test_logit_kd_standardize_changes_the_kd_term(write_recipe, tmp_path, catalogue):
    from kdlab.engine.runner import run

    plain = run(write_recipe(), out=tmp_path, run_id="plain", catalogue=catalogue).metrics["student"]
    z = run(write_recipe(), out=tmp_path, run_id="z", catalogue=catalogue,
            overrides=["stages.student.methods.logit_kd.standardize=true"]).metrics["student"]
    assert z["test/loss"] != plain["test/loss"]
