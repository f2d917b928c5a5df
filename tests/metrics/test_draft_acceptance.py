"""The draft-model metrics (issue #30 item 5): the acceptance of speculative sampling (1 - TV),
greedy agreement and the expected tokens per target call, in chunks from hidden states as from
logits, and in a run equal to the same sums over the exported models on the test split."""

from __future__ import annotations

import pytest
import torch

from kdlab import KdlabError, ModelOutput, TopK
from kdlab.engine.heads import HiddenStates
from kdlab.metrics.draft_acceptance import DraftAcceptance, DraftAcceptanceConfig, acceptance_sums


def test_acceptance_is_one_minus_the_total_variation_and_greedy_is_argmax_agreement():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 30, generator=g) * 2, torch.randn(2, 5, 30, generator=g) * 2
    targets = torch.randint(0, 30, (2, 5), generator=g)
    targets[1, 3:] = -100  # padding: not a position
    valid = targets >= 0
    p, q = torch.softmax(t, -1)[valid], torch.softmax(s, -1)[valid]
    tv = 0.5 * (p - q).abs().sum(-1)
    got = acceptance_sums(ModelOutput(s), ModelOutput(t), targets)
    assert got[2] == 8
    assert got[0].item() == pytest.approx(float((1 - tv).sum()), rel=1e-6)
    assert got[1].item() == float((s[valid].argmax(-1) == t[valid].argmax(-1)).sum())
    # from hidden states and the heads (what the loop gives a chunked LM), in chunks of 3 rows
    h_s, w_s, h_t, w_t = (torch.randn(2, 5, 8, generator=g), torch.randn(30, 8, generator=g),
                          torch.randn(2, 5, 16, generator=g), torch.randn(30, 16, generator=g))
    whole = acceptance_sums(ModelOutput(h_s @ w_s.T), ModelOutput(h_t @ w_t.T), targets)
    chunked = acceptance_sums(ModelOutput(None, hidden=HiddenStates(h_s, w_s)),
                              ModelOutput(None, hidden=HiddenStates(h_t, w_t)), targets)
    torch.testing.assert_close(chunked, whole)

    plugin = DraftAcceptance(DraftAcceptanceConfig(gamma=3))
    plugin.kdlab_eval_start()
    plugin.sums = acceptance_sums(ModelOutput(t), ModelOutput(t), targets)  # a draft equal to its target
    m = plugin.kdlab_eval_metrics("test")
    assert m["acceptance"] == pytest.approx(1.0) and m["acceptance_greedy"] == 1.0
    assert m["tokens_per_call"] == pytest.approx(4.0)  # every drafted token and the target's own
    plugin.sums = torch.tensor([4.0, 2.0, 8.0], dtype=torch.float64)  # a = 0.5
    assert plugin.kdlab_eval_metrics("test")["tokens_per_call"] == pytest.approx((1 - 0.5 ** 4) / 0.5)


def test_a_top_k_teacher_or_another_vocabulary_is_an_error_naming_the_metric():
    s = torch.randn(1, 3, 10)
    top = TopK(torch.log_softmax(torch.randn(1, 3, 10), -1).topk(4, -1)[0], torch.zeros(1, 3, 4, dtype=torch.int32), 10)
    with pytest.raises(KdlabError, match="draft_acceptance: the teacher's outputs are a top-k cache"):
        acceptance_sums(ModelOutput(s), ModelOutput(None, topk=top), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(KdlabError, match="the teacher has 12 tokens, the student 10"):
        acceptance_sums(ModelOutput(s), ModelOutput(torch.randn(1, 3, 12)), torch.zeros(1, 3, dtype=torch.long))


RECIPE = """
name = "draft"
seed = 0
device = "cpu"
[data]
dataset = "text"
dir = "{root}"
tokenizer = "{root}/tokenizer.json"
seq_len = 16
batch_size = 4
eval_batch_size = 3
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[defaults]
optimizer = {{ name = "adam", lr = 0.01 }}
[stages.teacher]
epochs = 1
model = {{ arch = "conv_lm", width = 16, layers = 1, receptive_field = 2, dropout = 0.0 }}
methods.lm = {{}}
[stages.student]
epochs = 1
teachers = ["teacher"]
model = {{ arch = "transformer_lm", layers = 1, width = 16, heads = 2 }}
methods.lm = {{}}
methods.draft_acceptance = {{ gamma = 2 }}
"""


def test_a_run_reports_the_acceptance_of_the_exported_student_under_the_exported_teacher(tmp_path):
    from kdlab.data.word_corpus import generate
    from kdlab.engine.registry import discover
    from kdlab.engine.runner import run

    root = generate(tmp_path / "corpus", 60, {"train": 8 * 16 + 1, "val": 4 * 16 + 1, "test": 5 * 16 + 1})
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(root=root))
    result = run(recipe, out=tmp_path / "runs")
    m = result.metrics["student"]
    assert 0 < m["test/acceptance"] < 1 and 0 <= m["test/acceptance_greedy"] <= 1
    assert m["test/tokens_per_call"] == pytest.approx(1 + m["test/acceptance"] + m["test/acceptance"] ** 2)

    # the same from the exported files over the test split, outside kdlab's loop
    from kdlab.engine.loop import rebuild_exported
    from kdlab.engine.plan import build_data
    from kdlab.engine.recipe import load_recipe

    catalogue = discover()
    data = build_data(catalogue, load_recipe(recipe, catalogue, []))
    models = [rebuild_exported(result.run_dir / "models" / f"{n}.pt", catalogue) for n in ("student", "teacher")]
    total = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for batch in data.test:
            total += acceptance_sums(ModelOutput(models[0](batch.inputs)), ModelOutput(models[1](batch.inputs)),
                                     batch.targets)
    assert m["test/acceptance"] == pytest.approx(float(total[0] / total[2]), abs=1e-6)
    assert m["test/acceptance_greedy"] == pytest.approx(float(total[1] / total[2]), abs=1e-9)
