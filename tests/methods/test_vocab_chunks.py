"""Vocabulary losses in chunks of tokens: the same values and gradients as over whole logits."""

from __future__ import annotations

import pytest
import torch

from kdlab import HiddenStates, ModelOutput, TopK
from kdlab.methods import vocab_chunks
from kdlab.methods.lm import lm_loss
from kdlab.methods.token_kd import token_kd_term
from kdlab.metrics.lm import token_sums


def _student(batch=3, length=7, width=8, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, width, generator=g, requires_grad=True)
    weight = torch.randn(vocab, width, generator=g, requires_grad=True)
    return hidden, weight


def _targets(batch=3, length=7, vocab=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, vocab, (batch, length), generator=g)
    targets[0, :3] = -1  # a prompt
    targets[2, -2:] = -1  # padding
    return targets


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True)


def _teachers(kind, hidden_shape, vocab, seed=2):
    g = torch.Generator().manual_seed(seed)
    batch, length, width = hidden_shape
    if kind == "logits":
        return [ModelOutput(logits=torch.randn(batch, length, vocab, generator=g) * 2)]
    if kind == "hidden":
        return [ModelOutput(logits=HiddenStates(torch.randn(batch, length, width, generator=g),
                                                torch.randn(vocab, width, generator=g)))]
    if kind == "topk":
        logp = torch.log_softmax(torch.randn(batch, length, vocab, generator=g) * 2, -1)
        values, index = logp.topk(5, -1)
        return [ModelOutput(None, topk=TopK(values, index, vocab))]
    # two teachers, one of each dense kind
    return _teachers("logits", hidden_shape, vocab, seed) + _teachers("hidden", hidden_shape, vocab, seed + 1)


@pytest.mark.parametrize("chunk", [1, 4, 5, 1000])
def test_chunked_lm_loss_equals_the_whole_logits_loss_and_its_gradients(chunk):
    hidden, weight = _student()
    targets = _targets()
    whole = lm_loss(hidden @ weight.t(), targets, label_smoothing=0.1)
    chunked = lm_loss(ModelOutput(logits=HiddenStates(hidden, weight)), targets, label_smoothing=0.1, chunk=chunk)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    for a, b in zip(_grads(whole, hidden, weight), _grads(chunked, hidden, weight)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert _grads(chunked, hidden)[0][0, :3].abs().max() == 0  # no gradient through the prompt


@pytest.mark.parametrize("teacher", ["logits", "hidden", "topk", "two"])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_chunked_token_kd_equals_the_whole_logits_divergence_and_its_gradients(teacher, divergence):
    hidden, weight = _student()
    mask = _targets() >= 0
    teachers = _teachers(teacher, hidden.shape, weight.shape[0])
    kwargs = {"divergence": divergence, "temperature": 2.0, "divisor": mask.sum() + 3}
    whole = token_kd_term(ModelOutput(logits=hidden @ weight.t()), teachers, mask, **kwargs)
    chunked = token_kd_term(ModelOutput(logits=HiddenStates(hidden, weight)), teachers, mask, chunk=4, **kwargs)
    assert whole.item() > 0
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    for a, b in zip(_grads(whole, hidden, weight), _grads(chunked, hidden, weight)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_a_chunked_loss_scales_with_the_outer_gradient_and_composes_with_other_terms():
    hidden, weight = _student()
    targets = _targets()
    out = ModelOutput(logits=HiddenStates(hidden, weight))
    teachers = _teachers("logits", hidden.shape, weight.shape[0])
    mask = targets >= 0
    both = 0.3 * lm_loss(out, targets, chunk=2) + 2.0 * token_kd_term(out, teachers, mask, chunk=3) + hidden.pow(2).sum()
    logits = hidden @ weight.t()
    ref = 0.3 * lm_loss(logits, targets) + 2.0 * token_kd_term(ModelOutput(logits=logits), teachers, mask) + hidden.pow(2).sum()
    for a, b in zip(_grads(ref, hidden, weight), _grads(both, hidden, weight)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_no_valid_target_gives_zero_with_a_gradient_path():
    hidden, weight = _student()
    loss = lm_loss(ModelOutput(logits=HiddenStates(hidden, weight)), torch.full((3, 7), -1))
    assert loss.item() == 0
    assert all(g.abs().max() == 0 for g in _grads(loss, hidden, weight))


def test_hidden_states_give_their_logits_lazily_and_their_shape_without_them():
    hidden, weight = _student()
    out = ModelOutput(logits=HiddenStates(hidden, weight))
    assert out.hidden is not None and out._logits is None
    assert out.logits_shape == (3, 7, 40)
    assert out._logits is None  # the shape did not build them
    torch.testing.assert_close(out.logits, hidden @ weight.t())
    assert out.logits is out.logits  # built once


def test_token_sums_from_hidden_states_equal_those_from_logits(monkeypatch):
    monkeypatch.setattr(vocab_chunks, "CHUNK_BYTES", 4 * 40 * 4)  # 4 rows a chunk at this vocabulary
    hidden, weight = _student()
    targets = _targets()
    with torch.no_grad():
        chunked = token_sums(ModelOutput(logits=HiddenStates(hidden, weight)), targets)
        whole = token_sums(hidden @ weight.t(), targets)
    assert vocab_chunks.chunk_rows(40) == 16  # the floor
    torch.testing.assert_close(chunked, whole)
    assert whole[2].item() == (targets >= 0).sum().item()


def test_chunk_rows_fit_the_budget():
    assert vocab_chunks.chunk_rows(151_936) * 4 * 151_936 <= vocab_chunks.CHUNK_BYTES
    assert vocab_chunks.chunk_rows(151_936, budget=4 * 151_936 * 100) == 100


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_closed_form_forward_kl_has_the_value_and_gradient_of_autograd_through_log_softmax(temperature):
    g = torch.Generator().manual_seed(5)
    s = (torch.randn(2, 6, 30, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randn(2, 6, 30, generator=g, dtype=torch.float64) * 3
    from kdlab.methods.token_kd import token_divergence

    got = token_divergence(s, t, divergence="forward_kl", temperature=temperature)
    ref = torch.nn.functional.kl_div(torch.log_softmax(s.float() / temperature, -1),
                                     torch.log_softmax(t.float() / temperature, -1), log_target=True,
                                     reduction="none").sum(-1) * temperature**2
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    weights = torch.rand(2, 6, generator=g, dtype=torch.float64).float()
    (a,) = torch.autograd.grad((got * weights).sum(), s)
    (b,) = torch.autograd.grad((ref * weights).sum(), s)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_loops_deferred_terms_share_one_pass_and_equal_the_separate_losses():
    hidden, weight = _student()
    targets = _targets()
    mask = targets >= 0
    teachers = _teachers("hidden", hidden.shape, weight.shape[0])
    out = ModelOutput(logits=HiddenStates(hidden, weight))
    lm = lm_loss(out, targets, label_smoothing=0.1)
    kd = token_kd_term(out, teachers, mask, temperature=2.0)
    separate = 0.3 * lm + 0.7 * kd
    seen = []

    def spy(fn):
        def wrapped(logits, rows):
            seen.append((fn.__qualname__, logits))
            return fn(logits, rows)
        return wrapped

    deferred = [lm_loss(out, targets, label_smoothing=0.1, defer=True, chunk=4),
                token_kd_term(out, teachers, targets >= 0, temperature=2.0, defer=True, chunk=4)]
    assert deferred[0].group_key() == deferred[1].group_key()
    deferred = [vocab_chunks.RowsTerm(d.out, d.mask, spy(d.per_token), d.divisor, d.chunk) for d in deferred]
    fused, values = vocab_chunks.RowsTerm.evaluate(deferred, [0.3, 0.7])
    assert fused.item() == pytest.approx(separate.item(), rel=1e-6)
    assert [v.item() for v in values] == pytest.approx([lm.item(), kd.item()], rel=1e-6)
    for a, b in zip(_grads(separate, hidden, weight), _grads(fused, hidden, weight)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # both terms got the same logits tensor of every chunk: the head ran once per chunk
    chunks = -(-int(mask.sum()) // 4)
    assert len(seen) == 2 * chunks
    assert all(seen[2 * i][1] is seen[2 * i + 1][1] for i in range(chunks))


def test_deferred_terms_with_different_masks_each_keep_their_own_mean():
    hidden, weight = _student()
    targets = _targets()
    other = targets.clone()
    other[1] = -1
    out = ModelOutput(logits=HiddenStates(hidden, weight))
    deferred = [lm_loss(out, targets, defer=True), lm_loss(out, other, defer=True)]
    fused, values = vocab_chunks.RowsTerm.evaluate(deferred, [1.0, 2.0])
    a, b = lm_loss(out, targets), lm_loss(out, other)
    assert [v.item() for v in values] == pytest.approx([a.item(), b.item()], rel=1e-6)
    assert fused.item() == pytest.approx(a.item() + 2 * b.item(), rel=1e-6)


def test_a_teacher_head_gets_no_gradient_and_makes_no_graph():
    hidden, weight = _student()
    mask = _targets() >= 0
    (teacher,) = _teachers("hidden", hidden.shape, weight.shape[0])
    teacher.hidden.weight.requires_grad_(True)  # a teacher's parameters require grad; its forward ran without a graph
    loss = token_kd_term(ModelOutput(logits=HiddenStates(hidden, weight)), [teacher], mask, chunk=4)
    loss.backward()
    assert teacher.hidden.weight.grad is None
    assert vocab_chunks.teacher_rows(teacher, torch.arange(3)).requires_grad is False
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_a_caches_top_k_from_hidden_states_equals_the_top_k_of_the_whole_logits(monkeypatch):
    hidden, weight = _student(batch=2, length=5, vocab=40)
    monkeypatch.setattr(vocab_chunks, "chunk_rows", lambda vocab, budget=None: 3)  # 4 chunks of 10 rows
    values, index = vocab_chunks.topk_logprobs(ModelOutput(logits=HiddenStates(hidden, weight)), 6)
    ref_values, ref_index = torch.log_softmax(hidden @ weight.t(), -1).topk(6, -1)
    assert values.shape == (2, 5, 6) and not values.requires_grad
    torch.testing.assert_close(values, ref_values.detach())
    assert torch.equal(index, ref_index)
