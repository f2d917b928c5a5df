"""MiniLM relations, GKD's on-policy schedule, sequence-level KD's teacher responses."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.methods.gkd import on_policy_step
from kdlab.methods.minilm import minilm_loss, relations
from kdlab.methods.seq_kd import SeqKDConfig, teacher_sequences


def test_relations_are_causal_softmaxes_over_valid_positions():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    valid = torch.tensor([[True, True, False]])
    r = relations(x, 1, valid).exp()[0, 0]
    scale = 1 / math.sqrt(2)
    # row 1 relates to positions 0 and 1 only: softmax([x1.x0, x1.x1] / sqrt 2) = softmax([0, 1/sqrt2])
    e = math.exp(scale)
    assert r[1, 0].item() == pytest.approx(1 / (1 + e), rel=1e-5) and r[1, 1].item() == pytest.approx(e / (1 + e), rel=1e-5)
    assert r[0, 0].item() == pytest.approx(1.0) and r[0, 1:].sum().item() == 0  # no look ahead
    assert r[2, 2].item() == 0  # a padded position is never related to


def test_minilm_loss_is_zero_for_equal_relations_and_ignores_width():
    torch.manual_seed(0)
    s = torch.randn(2, 5, 8)
    valid = torch.ones(2, 5, dtype=torch.bool)
    assert minilm_loss(s, s.clone(), valid, heads=2).item() == pytest.approx(0, abs=1e-6)
    # a wider teacher whose heads repeat the student's features, scaled so that the scaled dot
    # products match (head width 8 against 4: 2 c^2 / sqrt 8 = 1 / sqrt 4)
    t = torch.cat([s[..., :4], s[..., :4], s[..., 4:], s[..., 4:]], -1) * 2 ** -0.25
    assert minilm_loss(s, t, valid, heads=2).item() == pytest.approx(0, abs=1e-5)
    assert minilm_loss(s, torch.randn(2, 5, 16), valid, heads=2).item() > 0.01


def test_on_policy_steps_follow_the_fraction_and_the_seed():
    steps = [on_policy_step(0, s, 0.3) for s in range(2000)]
    assert 0.25 < sum(steps) / len(steps) < 0.35
    assert steps == [on_policy_step(0, s, 0.3) for s in range(2000)]  # every process agrees
    assert not any(on_policy_step(0, s, 0.0) for s in range(100)) and all(on_policy_step(0, s, 1.0) for s in range(100))


class Echo(torch.nn.Module):
    """A teacher that answers every prompt with 3, 4 and the end token (9)."""

    def forward(self, tokens):
        nxt = torch.where(tokens == 8, 3, torch.where(tokens == 3, 4, 9))
        return torch.nn.functional.one_hot(nxt, 10).float() * 20


def test_teacher_sequences_put_the_teachers_response_after_each_prompt():
    from types import SimpleNamespace

    inputs = torch.tensor([[1, 8, 5, 6, 0, 0, 0, 0], [1, 2, 8, 7, 7, 7, 0, 0]])
    prompts = torch.tensor([2, 3])  # each prompt ends with the agent token (8)
    text = SimpleNamespace(end_id=9, pad_id=0)
    x, y = teacher_sequences(Echo(), inputs, prompts, text=text, cfg=SeqKDConfig(max_new_tokens=5), seed=0,
                             device=torch.device("cpu"), batch_size=1)
    assert x.tolist() == [[1, 8, 3, 4, 9, 0, 0, 0], [1, 2, 8, 3, 4, 9, 0, 0]]
    assert y.tolist() == [[-1, 3, 4, 9, -1, -1, -1, -1], [-1, -1, 3, 4, 9, -1, -1, -1]]


def test_seq_kd_responses_are_kept_on_disk_and_reused(write_recipe, tmp_path, catalogue, caplog):
    """Two stages with the same teacher and settings: the first writes the teacher's responses
    under a key, the second reads them back and trains the same student; a sampled setting is
    another key."""
    pytest.importorskip("transformers")
    import logging

    from kdlab.engine import checkpoint
    from kdlab.engine.runner import run
    from tests.data.test_text import make_dialogues
    from tests.methods.test_conformance import TEXT_RECIPE

    store = tmp_path / "seq"
    stages = "".join(f'\n[stages.{name}]\nteachers = ["teacher"]\nmethods.seq_kd = {{ dir = "{store}", max_new_tokens = 4{extra} }}\n'
                     for name, extra in (("first", ""), ("second", ""), ("sampled", ", temperature = 1.0")))
    text = TEXT_RECIPE.format(corpus=make_dialogues(tmp_path / "corpus"), methods="").split("[stages.student]")[0] + stages
    with caplog.at_level(logging.INFO, logger="kdlab"):
        result = run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    assert len(list(store.glob("seq_kd-*.pt"))) == 2
    assert sum("teacher responses read from" in r.getMessage() for r in caplog.records) == 1
    w = {s: checkpoint.load_model_file(result.run_dir / "models" / f"{s}.pt")["state_dict"] for s in ("first", "second", "sampled")}
    assert all(torch.equal(w["first"][k], w["second"][k]) for k in w["first"])
    assert not all(torch.equal(w["first"][k], w["sampled"][k]) for k in w["first"])
    saved = checkpoint.load(next(store.glob("seq_kd-*.pt")))
    assert set(saved) == {"inputs", "targets"} and saved["inputs"].shape == saved["targets"].shape


class _StopAfterFirstEpoch:
    default_enabled = True

    from kdlab import hookimpl as _hookimpl

    @_hookimpl(trylast=True)
    def kdlab_epoch_end(self, stage, epoch):
        if stage.name == "student" and epoch == 0:
            raise KeyboardInterrupt


class _Terms:
    default_enabled = True
    seen: list = []

    from kdlab import hookimpl as _hookimpl

    @_hookimpl
    def kdlab_step_end(self, stage, terms):
        if stage.name == "student":
            _Terms.seen.append(dict(terms))


class _CountSteps:
    default_enabled = True
    steps = 0

    from kdlab import hookimpl as _hookimpl

    @_hookimpl
    def kdlab_step_end(self, stage):
        if stage.name == "student":
            _CountSteps.steps += 1


def test_language_model_methods_resume_bit_exactly(write_recipe, tmp_path):
    """Every LM method at once with the top-k cache, interrupted after its first epoch and
    resumed: the same weights as an uninterrupted run (GKD's on-policy steps and noise follow the
    step; seq KD's greedy responses are made again from the same teacher)."""
    pytest.importorskip("transformers")
    from kdlab.engine.registry import discover
    from kdlab.engine.runner import run
    from tests.data.test_text import make_dialogues
    from tests.methods.test_conformance import TEXT_RECIPE

    lines = ["methods.lm = {}", 'methods.token_kd = { divergence = "skew_rkl" }', "methods.seq_kd = { max_new_tokens = 4 }",
             "methods.gkd = { fraction = 0.5, max_new_tokens = 4 }", 'methods.minilm = { pairs = { feat = "feat" }, relation_heads = 2 }',
             "methods.teacher_cache = { topk = 8 }"]
    text = TEXT_RECIPE.format(corpus=make_dialogues(tmp_path / "corpus"), methods="\n".join(lines))
    text = text.replace("epochs = 1\nmodel", "epochs = 2\nmodel")
    recipe = write_recipe(text)
    straight = run(recipe, out=tmp_path / "runs", run_id="straight", catalogue=discover())
    stopping = discover(extra={"_stop": _StopAfterFirstEpoch})
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "runs", run_id="resumed", catalogue=stopping)
    _CountSteps.steps = 0
    resumed = run(recipe, out=tmp_path / "runs", run_id="resumed", catalogue=discover(extra={"_count": _CountSteps}))
    assert _CountSteps.steps == 2  # only the second epoch was trained again
    a = torch.load(straight.run_dir / "checkpoints/student/last.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "checkpoints/student/last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])


def test_the_sampled_reverse_kl_term_is_an_unbiased_estimate_of_the_reverse_kl_gradient():
    """GKD's on_policy = "sampled_reverse_kl": over tokens sampled from the student, the mean
    gradient of -sg(log p_t - log p_s) log p_s is the gradient of KL(student || teacher)."""
    from kdlab import ModelOutput
    from kdlab.methods.gkd import sampled_reverse_kl_term

    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(7, generator=g) * 1.5, torch.randn(7, generator=g) * 1.5
    z.requires_grad_()
    exact = (torch.softmax(z, -1) * (torch.log_softmax(z, -1) - torch.log_softmax(t, -1))).sum()
    (want,) = torch.autograd.grad(exact, z)
    n = 400_000
    x = torch.multinomial(torch.softmax(z.detach(), -1), n, replacement=True, generator=g)
    term = sampled_reverse_kl_term(ModelOutput(z.expand(1, n, 7)), [ModelOutput(t.expand(1, n, 7))], x[None])
    (got,) = torch.autograd.grad(term, z)
    assert float(want.abs().max()) > 0.1  # a gradient to estimate
    torch.testing.assert_close(got, want, atol=0.01, rtol=0)
    # its value is not the KL, but the KL is the mean of its advantage: log p_s(x) - log p_t(x)
    lp = torch.log_softmax(z.detach(), -1)[x] - torch.log_softmax(t, -1)[x]
    assert float(lp.mean()) == pytest.approx(float(exact), abs=0.01)


def test_gkd_trains_with_the_sampled_reverse_kl_on_every_step(write_recipe, tmp_path):
    pytest.importorskip("transformers")
    from kdlab.engine.registry import discover
    from kdlab.engine.runner import run
    from tests.data.test_text import make_dialogues
    from tests.methods.test_conformance import TEXT_RECIPE

    text = TEXT_RECIPE.format(corpus=make_dialogues(tmp_path / "corpus"), methods="\n".join([
        "methods.lm = {}", 'methods.gkd = { fraction = 1.0, max_new_tokens = 4, on_policy = "sampled_reverse_kl" }']))
    result = run(write_recipe(text), out=tmp_path / "runs", catalogue=discover(extra={"_terms": _Terms}))
    values = [float(t["gkd"]) for t in _Terms.seen]
    assert len(values) == 2 and all(math.isfinite(v) and v != 0 for v in values)  # two steps, both on-policy
    assert math.isfinite(result.metrics["student"]["test/perplexity"])
