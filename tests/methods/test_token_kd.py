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


# -- sparse targets: the teacher's top k and its tail ------------------------------------------

from kdlab.engine.types import ModelOutput, TopK  # noqa: E402
from kdlab.methods.token_kd import bucket_logprobs, divergence_of  # noqa: E402

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl"]


def _peaked(shape, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, vocab, generator=g) * 3  # a spread like a small LM's


def _sparse(teacher_logits, k):
    logp = torch.log_softmax(teacher_logits, -1)
    values, index = logp.topk(k, -1)
    return TopK(values.half(), index.to(torch.int32), teacher_logits.shape[-1]), logp


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_top_k_plus_tail_is_the_divergence_of_the_bucketed_distributions_values_and_gradients(divergence):
    """Against the same divergence computed from the full teacher distribution summed into the
    k + 1 buckets: equal values and student gradients (fp16 values aside: the teacher here is
    exact in float32)."""
    vocab, k = 300, 8
    student = _peaked((4, 5), vocab, 0).requires_grad_()
    teacher = _peaked((4, 5), vocab, 1)
    logp = torch.log_softmax(teacher, -1)
    values, index = logp.topk(k, -1)
    top = TopK(values, index, vocab)
    s, t = bucket_logprobs(student, top)
    sparse = divergence_of(s, t, divergence=divergence).sum()
    (g_sparse,) = torch.autograd.grad(sparse, student)

    def bucket(logits):  # the full distribution, summed over the tail explicitly
        lp = torch.log_softmax(logits, -1)
        tail = torch.ones_like(lp, dtype=torch.bool).scatter(-1, index, False)
        return torch.cat([lp.gather(-1, index), lp.masked_fill(~tail, float("-inf")).logsumexp(-1, keepdim=True)], -1)

    dense = divergence_of(bucket(student), bucket(teacher), divergence=divergence).sum()
    (g_dense,) = torch.autograd.grad(dense, student)
    assert torch.allclose(sparse, dense, atol=1e-5, rtol=1e-5)
    assert torch.allclose(g_sparse, g_dense, atol=1e-6)


@pytest.mark.parametrize(("vocab", "k"), [(300, 8), (300, 64), (50, 50), (50, 49)])
def test_the_closed_form_bucket_kl_equals_autograd_through_the_buckets(vocab, k):
    """token_kd's forward KL from a top-k at temperature 1 (closed-form gradient) against the
    same divergence differentiated by autograd through bucket_logprobs; k = V floors the tail
    (no gradient through it), k = V - 1 leaves one tail token."""
    from kdlab.methods.token_kd import _BucketForwardKL

    student = _peaked((4, 5), vocab, 4).requires_grad_()
    top, _ = _sparse(_peaked((4, 5), vocab, 5), k)
    s, t = bucket_logprobs(student, top)
    want = divergence_of(s, t, divergence="forward_kl")
    (g_want,) = torch.autograd.grad(want.sum(), student)
    got = _BucketForwardKL.apply(student, top.index.long(), top.values.float(), top.tail())
    (g_got,) = torch.autograd.grad(got.sum(), student)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)
    assert torch.allclose(g_got, g_want, atol=1e-6)
    mask = torch.ones(4, 5, dtype=torch.bool)  # and token_kd takes it
    assert torch.allclose(token_kd_loss(student, ModelOutput(None, topk=top), mask), want.mean(), atol=1e-6)


def test_a_student_whose_mass_outside_the_teachers_top_k_is_tiny_gets_its_exact_tail():
    """The closed form reads the student's tail from its top-k mass (1 - mass) where that is
    precise, and sums the other tokens where the tail is under 1e-4: a student that put all but
    1e-12 of its mass on the teacher's top 8 has the loss and gradient of autograd there too."""
    from kdlab.methods.token_kd import _BucketForwardKL

    top, _ = _sparse(_peaked((4, 5), 300, 5), 8)
    student = _peaked((4, 5), 300, 4)
    sure = torch.zeros(4, 5, dtype=torch.bool)
    sure[0, :3] = sure[2, 4] = True  # some rows almost certain of the teacher's top 8, the others not
    student[sure] = student[sure].scatter(-1, top.index[sure].long(), 40.0)
    student.requires_grad_()
    s, t = bucket_logprobs(student, top)
    assert float(s[..., -1][sure].exp().max()) < 1e-9 and float(s[..., -1][~sure].exp().min()) > 1e-3
    want = divergence_of(s, t, divergence="forward_kl")
    (g_want,) = torch.autograd.grad(want.sum(), student)
    got = _BucketForwardKL.apply(student, top.index.long(), top.values.float(), top.tail())
    (g_got,) = torch.autograd.grad(got.sum(), student)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(g_got, g_want, atol=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_with_k_equal_to_the_vocabulary_the_sparse_divergence_is_the_full_one(divergence):
    student, teacher = _peaked((3, 4), 50, 2), _peaked((3, 4), 50, 3)
    top = TopK(*torch.log_softmax(teacher, -1).topk(50, -1), 50)
    mask = torch.ones(3, 4, dtype=torch.bool)
    sparse = token_kd_loss(student, ModelOutput(None, topk=top), mask, divergence=divergence)
    full = token_kd_loss(student, teacher, mask, divergence=divergence)
    assert torch.allclose(sparse, full, atol=1e-5)


def test_the_tail_bucket_bounds_the_full_kl_from_below_and_even_spreading_does_not():
    """Data processing: KL between the bucketed distributions <= the full KL. The old expansion
    (the tail spread evenly over V - k tokens) is a different, flattened teacher: its KL to the
    true teacher is large when the top k hold little mass."""
    vocab, k = 2000, 32
    student, teacher = _peaked((6, 16), vocab, 4), _peaked((6, 16), vocab, 5)
    top, logp = _sparse(teacher, k)
    mask = torch.ones(6, 16, dtype=torch.bool)
    full = token_kd_loss(student, teacher, mask, divergence="forward_kl")
    sparse = token_kd_loss(student, ModelOutput(None, topk=top), mask, divergence="forward_kl")
    assert 0 < sparse <= full + 1e-4
    flattened = top.dense()
    mass = top.values.float().exp().sum(-1).mean()
    assert mass < 0.9  # a teacher that leaves real mass outside its top 32
    assert (logp.exp() * (logp - flattened)).sum(-1).mean() > 0.1  # the expansion is not the teacher


def test_a_cached_top_k_teacher_is_never_expanded_by_token_kd():
    vocab, k = 1000, 16
    student, teacher = _peaked((2, 8), vocab, 6).requires_grad_(), _peaked((2, 8), vocab, 7)
    out = ModelOutput(None, topk=_sparse(teacher, k)[0])
    loss = token_kd_loss(student, out, torch.ones(2, 8, dtype=torch.bool), divergence="reverse_kl")
    loss.backward()
    assert out._logits is None  # no (positions x vocabulary) teacher tensor was built
    assert out.logits.shape == (2, 8, vocab) and out._logits is not None  # on demand, for dense methods


def test_renormalized_top_k_compares_the_k_tokens_alone():
    vocab, k = 100, 5
    student, teacher = _peaked((2, 3), vocab, 8), _peaked((2, 3), vocab, 9)
    top, _ = _sparse(teacher, k)
    s, t = bucket_logprobs(student, top, target="renormalized")
    assert s.shape[-1] == k and torch.allclose(t.exp().sum(-1), torch.ones(2, 3))
    expected = torch.log_softmax(torch.log_softmax(student, -1).gather(-1, top.index.long()), -1)
    assert torch.allclose(s, expected, atol=1e-6)
