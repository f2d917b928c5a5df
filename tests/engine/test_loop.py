"""The training loop: loss terms and weights, taps, extra modules, errors at the first step."""

from __future__ import annotations

import pytest
import torch

from kdlab import DeferredTerm, KdlabError, ModelOutput, hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from tests.conftest import TINY

ONE_STAGE = TINY.split("[stages.student]")[0]


class FixedTerms:
    """Loss terms with known values: a = 1 + 0 * logits, b = 2 + 0 * logits."""

    @hookimpl
    def kdlab_loss_terms(self, student_out):
        zero = student_out.logits.sum() * 0
        return {"a": zero + 1.0, "b": zero + 2.0}


class Recorder:
    default_enabled = True
    losses: list[float] = []
    features: list[dict] = []

    @hookimpl
    def kdlab_step_end(self, loss, terms):
        Recorder.losses.append((loss.item(), {k: t.item() for k, t in terms.items()}))

    @hookimpl
    def kdlab_loss_terms(self, student_out, teacher_outs):
        Recorder.features.append(
            ({k: tuple(v.shape) for k, v in student_out.features.items()},
             [{k: tuple(v.shape) for k, v in t.features.items()} for t in teacher_outs])
        )


class Adapter:
    """Adds a trainable module sized from the probe and uses it in a loss term."""

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        student_out, teacher_outs = probe
        width = student_out.features["emb"].shape[1]
        return {"adapter": torch.nn.Linear(width, teacher_outs[0].features["emb"].shape[1])}

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out, teacher_outs):
        mapped = stage.extra["adapter"](student_out.features["emb"])
        return {"hint": torch.nn.functional.mse_loss(mapped, teacher_outs[0].features["emb"])}


class Constant(DeferredTerm):
    """A deferred term of a known value; every group evaluation is recorded."""

    calls: list[list[float]] = []

    def __init__(self, value, like):
        self.value, self.like = value, like

    def group_key(self):
        return "all"

    @classmethod
    def evaluate(cls, terms, weights):
        cls.calls.append(list(weights))
        values = [t.like.sum() * 0 + t.value for t in terms]
        return sum(w * v for w, v in zip(weights, values)), [v.detach() for v in values]


class DeferredTerms:
    @hookimpl
    def kdlab_loss_terms(self, student_out):
        return {"c": Constant(4.0, student_out.logits), "d": Constant(5.0, student_out.logits)}


@pytest.fixture
def cat():
    Recorder.losses, Recorder.features, Constant.calls = [], [], []
    return discover(extra={"fixed": FixedTerms, "recorder": Recorder, "adapter": Adapter, "deferred": DeferredTerms})


def test_deferred_terms_are_evaluated_once_per_group_with_their_weights(write_recipe, tmp_path, cat):
    text = ONE_STAGE.replace("methods.supervised = {}",
                             "methods.fixed = {}\nmethods.deferred = {}\nloss_weights = { a = 0.5, d = 3.0 }")
    run(write_recipe(text), out=tmp_path / "runs", catalogue=cat)
    assert Recorder.losses and len(Constant.calls) == len(Recorder.losses)  # one call per step for both
    assert all(weights == [1.0, 3.0] for weights in Constant.calls)
    for loss, terms in Recorder.losses:
        assert terms == {"a": 1.0, "b": 2.0, "c": 4.0, "d": 5.0}
        assert loss == pytest.approx(0.5 * 1.0 + 2.0 + 4.0 + 3.0 * 5.0)


def test_loss_is_weighted_sum_of_terms(write_recipe, tmp_path, cat):
    text = ONE_STAGE.replace("methods.supervised = {}", "methods.fixed = {}\nloss_weights = { a = 0.5, b = 3.0 }")
    run(write_recipe(text), out=tmp_path / "runs", catalogue=cat)
    assert Recorder.losses, "no step recorded"
    for loss, terms in Recorder.losses:
        assert terms == {"a": 1.0, "b": 2.0}
        assert loss == pytest.approx(0.5 * 1.0 + 3.0 * 2.0)


class UndeclaredCE:
    """A method that does not declare its terms (no ``requires``): only the loop can see them."""

    @hookimpl
    def kdlab_loss_terms(self, student_out, batch):
        return {"ce": torch.nn.functional.cross_entropy(student_out.logits, batch.targets)}


class UndeclaredNothing:
    @hookimpl
    def kdlab_loss_terms(self):
        return None


# The built-in methods declare their terms and teachers, so these mistakes are found before the
# first stage trains (tests/engine/test_preflight.py); the loop's own checks at the first step
# catch them for methods that do not declare.
def test_same_term_from_two_methods_is_an_error(write_recipe, tmp_path, catalogue):
    text = TINY.replace('methods.logit_kd = { temperature = 4.0, alpha = 0.5 }',
                        'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }\nmethods.supervised = {}')
    with pytest.raises(KdlabError, match="methods logit_kd and supervised both return the loss term 'ce'"):
        run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    undeclared = TINY.replace('methods.logit_kd = { temperature = 4.0, alpha = 0.5 }',
                              'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }\nmethods.ce_too = {}')
    with pytest.raises(KdlabError, match="two methods return the loss term 'ce'"):
        run(write_recipe(undeclared), out=tmp_path / "runs", catalogue=discover(extra={"ce_too": UndeclaredCE}))


def test_unknown_loss_weight_is_an_error(write_recipe, tmp_path, catalogue):
    text = ONE_STAGE.replace("methods.supervised = {}", "methods.supervised = {}\nloss_weights = { kd = 1.0 }")
    with pytest.raises(KdlabError, match="loss_weights names 'kd', but the methods return only: ce"):
        run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    undeclared = ONE_STAGE.replace("methods.supervised = {}", "methods.ce_too = {}\nloss_weights = { kd = 1.0 }")
    with pytest.raises(KdlabError, match="loss_weights names kd, but the methods return only: ce"):
        run(write_recipe(undeclared), out=tmp_path / "runs", catalogue=discover(extra={"ce_too": UndeclaredCE}))


def test_stage_without_loss_is_an_error(write_recipe, tmp_path, catalogue):
    with pytest.raises(KdlabError, match="no method returns a loss term"):
        run(write_recipe(ONE_STAGE.replace("methods.supervised = {}", "")), out=tmp_path / "runs", catalogue=catalogue)
    undeclared = ONE_STAGE.replace("methods.supervised = {}", "methods.nothing = {}")
    with pytest.raises(KdlabError, match="no method returned a loss term"):
        run(write_recipe(undeclared), out=tmp_path / "runs", catalogue=discover(extra={"nothing": UndeclaredNothing}))


def test_logit_kd_without_teacher_is_an_error(write_recipe, tmp_path, catalogue):
    text = ONE_STAGE.replace("methods.supervised = {}", "methods.logit_kd = {}")
    with pytest.raises(KdlabError, match="logit_kd needs 1 teacher, the stage lists 0"):
        run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)


def test_taps_and_extra_modules(write_recipe, tmp_path, cat):
    text = TINY.replace(
        'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }',
        'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }\nmethods.adapter = {}\n'
        'taps = { student = { emb = "embed", b0 = "blocks.0" }, teacher = { emb = "embed" } }',
    )
    result = run(write_recipe(text), out=tmp_path / "runs", catalogue=cat)
    student_feats, teacher_feats = Recorder.features[-1]
    assert student_feats["emb"][1] == 8 and student_feats["b0"][1:] == (4, 4, 4)
    assert teacher_feats == [{"emb": (student_feats["emb"][0], 16)}]
    assert {"hint", "kd", "ce"} <= set(Recorder.losses[-1][1])
    # the adapter trained with the student, is checkpointed, and is not part of the export
    last = torch.load(result.run_dir / "checkpoints/student/last.pt", weights_only=True)
    assert set(last["extra"]) == {"adapter.weight", "adapter.bias"}
    exported = torch.load(result.run_dir / "models/student.pt", weights_only=True)
    assert not any(k.startswith("adapter") for k in exported["state_dict"])


def test_unknown_tap_names_the_key(write_recipe, tmp_path, catalogue):
    text = ONE_STAGE.replace("methods.supervised = {}", 'methods.supervised = {}\ntaps.student = { x = "blocks.9" }')
    with pytest.raises(KdlabError, match=r"recipe.toml:\d+: no module 'blocks.9' in the cnn student.* @ \$.stages.teacher.taps.student.x"):
        run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)


def test_model_output_cat():
    a = ModelOutput(torch.zeros(2, 3), {"f": torch.zeros(2, 4)})
    b = ModelOutput(torch.ones(1, 3), {"f": torch.ones(1, 4)})
    out = ModelOutput.cat([a, b])
    assert out.logits.shape == (3, 3) and out.features["f"].shape == (3, 4)
    assert out.logits[2].sum() == 3


class Diverge:
    """A loss term that becomes NaN in the second epoch."""

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out):
        bad = float("nan") if stage.epoch == 1 else 0.0
        return {"diverge": student_out.logits.sum() * 0 + bad}


def test_non_finite_loss_stops_before_the_checkpoint(write_recipe, tmp_path):
    cat = discover(extra={"diverge": Diverge})
    text = ONE_STAGE.replace("methods.supervised = {}", "methods.supervised = {}\nmethods.diverge = {}")
    text += "\n[plugins.checkpoint]\nevery = 1\n"
    with pytest.raises(KdlabError, match=r"stage teacher: the loss became nan in epoch 2 \(terms: .*diverge=nan"):
        run(write_recipe(text), out=tmp_path, catalogue=cat)
    last = torch.load(next(tmp_path.glob("tiny/*/checkpoints/teacher/last.pt")), weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["student"].values() if v.is_floating_point())


def test_a_learning_rate_that_overflows_the_update_is_one_line(write_recipe, tmp_path, catalogue):
    """lr = 1e38 is finite, but Adam's first update leaves float range: a traceback from torch."""
    with pytest.raises(KdlabError, match=r"stage teacher: the optimizer step overflowed in epoch 1 .* lower the learning rate"):
        run(write_recipe(ONE_STAGE.replace("lr = 0.01", "lr = 1e38")), out=tmp_path, catalogue=catalogue)


def test_zero_epochs_exports_the_starting_model(write_recipe, tmp_path, catalogue):
    from kdlab.engine import checkpoint
    from kdlab.engine.runner import run
    from tests.conftest import TINY, state_dicts_equal

    first = run(write_recipe(), out=tmp_path / "a", catalogue=catalogue).run_dir
    teacher = first / "models" / "teacher.pt"
    text = TINY.replace('[stages.teacher]\nmodel = { arch = "cnn", channels = [8, 16] }',
                        f'[stages.teacher]\nmodel = {{ arch = "cnn", channels = [8, 16] }}\nepochs = 0\ninit = "{teacher}"')
    second = run(write_recipe(text, "zero.toml"), out=tmp_path / "b", catalogue=catalogue)
    assert state_dicts_equal(checkpoint.load_model_file(teacher)["state_dict"],
                             checkpoint.load_model_file(second.run_dir / "models" / "teacher.pt")["state_dict"])
    assert second.metrics["teacher"]["test/accuracy"] > 0.5


class FloatTerm:
    @hookimpl
    def kdlab_loss_terms(self):
        return {"oops": 0.5}


class VectorTerm:
    @hookimpl
    def kdlab_loss_terms(self, student_out):
        return {"per_sample": student_out.logits.pow(2).mean(1)}


class ListResult:
    @hookimpl
    def kdlab_loss_terms(self, student_out):
        return [student_out.logits.mean()]


@pytest.mark.parametrize(("plugin", "message"), [
    (FloatTerm, r"plugin 'bad': loss term 'oops' is a float; a loss term must be a floating-point scalar"),
    (VectorTerm, r"plugin 'bad': loss term 'per_sample' is a tensor of shape \(64,\)"),
    (ListResult, r"plugin 'bad': kdlab_loss_terms returned a list"),
])
def test_a_wrong_loss_term_names_the_plugin_before_any_stage_trains(write_recipe, tmp_path, plugin, message):
    from kdlab.engine.registry import discover

    catalogue = discover(extra={"bad": plugin})
    recipe = write_recipe(TINY.replace("methods.supervised = {}", "methods.supervised = {}\nmethods.bad = {}"))
    with pytest.raises(KdlabError, match=message):
        run(recipe, out=tmp_path, catalogue=catalogue)
    assert not list(tmp_path.glob("*/*/models/*.pt"))  # failed at the first step of the first stage


def test_teachers_run_in_training_only_for_a_loss_that_takes_them(write_recipe, tmp_path, catalogue):
    """A student trained alone in a stage that lists a teacher does not run the teacher per step."""
    from kdlab import hookimpl
    from kdlab.engine.registry import discover
    from kdlab.engine.runner import run
    from tests.conftest import TINY

    calls = []

    class Count:
        default_enabled = True

        @hookimpl(wrapper=True)
        def kdlab_teacher_outputs(self, stage, batch):
            if stage.phase == "train":
                calls.append(stage.name)
            return (yield)

    counting = discover(extra={"count": Count})
    alone = TINY.replace("methods.logit_kd = { temperature = 4.0, alpha = 0.5 }", "methods.supervised = {}")
    run(write_recipe(alone), out=tmp_path / "a", catalogue=counting)
    assert calls == []
    run(write_recipe(TINY), out=tmp_path / "b", catalogue=counting)
    assert calls and set(calls) == {"student"}


def test_a_step_budget_ends_the_stage_mid_epoch_and_a_resume_does_not_train_past_it(write_recipe, tmp_path,
                                                                                     catalogue):
    """``max_steps`` stops the stage at that many optimizer steps (17 a digits epoch at batch 64):
    the partial epoch is evaluated, checkpointed and exported; resuming the finished stage's
    checkpoint trains nothing more."""
    import json

    import torch

    from kdlab.engine.runner import run
    from tests.conftest import TINY

    text = TINY.replace("epochs = 2", "epochs = 5").replace("[stages.student]", "[stages.student]\nmax_steps = 25")
    result = run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    state = torch.load(result.run_dir / "checkpoints" / "student" / "last.pt", weights_only=True)
    assert state["step"] == 25 and state["epoch"] == 2  # one full epoch of 17, then 8 steps of the second
    lines = (result.run_dir / "history" / "student.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2] and "val/accuracy" in json.loads(lines[-1])
    assert "test/accuracy" in result.metrics["student"]
    teacher = torch.load(result.run_dir / "checkpoints" / "teacher" / "last.pt", weights_only=True)
    assert teacher["epoch"] == 5  # the budget is the student stage's alone
    # the stage's checkpoint, resumed as if the export had been lost: nothing more is trained
    (result.run_dir / "models" / "student.pt").unlink()
    again = run(write_recipe(text), out=tmp_path / "runs", resume=result.run_dir, catalogue=catalogue)
    assert torch.load(result.run_dir / "checkpoints" / "student" / "last.pt", weights_only=True)["step"] == 25
    assert again.metrics["student"]["test/accuracy"] == result.metrics["student"]["test/accuracy"]


def test_a_token_budget_ends_the_stage_after_the_step_that_reaches_it_and_survives_a_resume(write_recipe, tmp_path,
                                                                                            catalogue):
    """``max_tokens`` counts the inputs' positions (a digit: 64 pixels, 17 batches an epoch, the
    last one short): 100,000 positions end the stage in its second epoch, after step 25; the
    per-step schedule decays over the 25 steps of full batches the budget takes."""
    import torch

    text = TINY.replace("epochs = 2", "epochs = 5").replace(
        "[stages.student]", "[stages.student]\nmax_tokens = 100000\nscheduler = { name = \"cosine\", interval = \"step\" }")
    result = run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    state = torch.load(result.run_dir / "checkpoints" / "student" / "last.pt", weights_only=True)
    assert state["step"] == 25 and state["epoch"] == 2
    # the step that reached the budget was the last: one batch (64 digits x 64 pixels) earlier it was short
    assert state["tokens"] >= 100_000 > state["tokens"] - 64 * 64
    assert state["scheduler"]["last_epoch"] == 25
    assert state["optimizer"]["param_groups"][0]["lr"] < 1e-9  # the cosine ended with the budget, not at 5 epochs
    (result.run_dir / "models" / "student.pt").unlink()
    again = run(write_recipe(text), out=tmp_path / "runs", resume=result.run_dir, catalogue=catalogue)
    assert torch.load(result.run_dir / "checkpoints" / "student" / "last.pt", weights_only=True)["step"] == 25
    assert again.metrics["student"]["test/accuracy"] == result.metrics["student"]["test/accuracy"]


def test_evaluation_streams_the_split_and_a_whole_split_metric_still_works_with_a_warning(write_recipe, tmp_path):
    from kdlab.engine.registry import PluginDeprecationWarning

    seen = {}

    class Streaming:
        default_enabled = True

        @hookimpl
        def kdlab_eval_start(self, split):
            self.n, self.batches = 0, 0

        @hookimpl
        def kdlab_eval_batch(self, split, batch, output, teacher_outputs):
            assert output.logits.shape[0] == len(batch.targets) <= 64 and not torch.is_grad_enabled()
            self.n += len(batch.targets)
            self.batches += 1
            seen["teachers"] = len(teacher_outputs)

        @hookimpl
        def kdlab_eval_metrics(self, split):
            return {"samples": self.n, "batches": self.batches}

    class Whole:  # the previous release's way
        default_enabled = True

        @hookimpl
        def kdlab_eval_metrics(self, split, output, targets):
            return {"whole": len(targets), "whole_logits": output.logits.shape[0]}

    cat = discover(extra={"streaming": Streaming, "whole": Whole})
    with pytest.warns(PluginDeprecationWarning, match="plugin 'whole': kdlab_eval_metrics takes the whole split"):
        metrics = run(write_recipe(TINY.replace("batch_size = 64", "batch_size = 64\neval_batch_size = 64")),
                      out=tmp_path / "runs", catalogue=cat).metrics
    student = metrics["student"]
    assert student["val/samples"] == student["val/whole"] == student["val/whole_logits"] > 64
    assert student["val/batches"] == -(-student["val/samples"] // 64) >= 2
    assert seen["teachers"] == 1  # the student stage's teacher ran for the metric that takes it
    assert student["test/accuracy"] > 0.1  # the built-in metrics alongside


MEASURE_EVALUATION_PEAK = """
import resource, sys
from pathlib import Path
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
metrics = run(Path(sys.argv[1]), out=Path(sys.argv[2]), catalogue=discover()).metrics
assert metrics["lm"]["test/perplexity"] > 1000  # an untrained model on a 50,257-word vocabulary
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_the_peak_memory_of_evaluation_does_not_grow_with_the_split(tmp_path):
    """A 50,257-token vocabulary: one split's float32 logits at 1x are 1,024 x 50,257 x 4 B =
    206 MB, at 10x 2 GB; evaluated batch by batch (16 x 16 tokens), the process peaks the same."""
    import subprocess
    import sys

    from kdlab.data.word_corpus import generate as word_corpus

    vocab, seq, rows = 50_257, 16, 64
    logits_bytes = rows * seq * vocab * 4
    peaks = []
    for scale in (1, 10):
        root = word_corpus(tmp_path / f"x{scale}", vocab, {"train": 2 * seq + 1, "val": scale * rows * seq + 1,
                                                           "test": scale * rows * seq + 1})
        recipe = tmp_path / f"x{scale}.toml"
        recipe.write_text(f"""
name = "evalpeak"
seed = 0
device = "cpu"
[data]
dataset = "text"
dir = "{root}"
tokenizer = "{root / 'tokenizer.json'}"
seq_len = {seq}
batch_size = 2
eval_batch_size = 16
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[stages.lm]
epochs = 0
model = {{ arch = "conv_lm", width = 8, layers = 1, receptive_field = 2, dropout = 0.0 }}
optimizer = {{ name = "adam", lr = 0.01 }}
methods.supervised = {{}}
""")
        done = subprocess.run([sys.executable, "-c", MEASURE_EVALUATION_PEAK, str(recipe), str(tmp_path / f"runs{scale}")],
                              capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        peaks.append(int(done.stdout.split()[-1]))
    # holding the split (the previous release) adds 9 x 206 MB at least; streaming, only noise
    assert peaks[1] - peaks[0] < 0.25 * logits_bytes, (peaks, logits_bytes)
