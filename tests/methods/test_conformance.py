"""Every registered method plugin trains for two steps on a tiny CPU model (with two teachers
and feature taps under the aliases the methods use by default, `emb` and `feat`): at the first
step its own loss terms are present, finite and non-zero, and change the student's gradient
(a method that adds no term adds none). Every method for image data also passes
``kdlab.testing.check_method``: exact resume after a stop at every epoch, SIGINT, SIGTERM and a
crash."""

from __future__ import annotations

import math

import pytest

from kdlab.engine.preflight import stage_view
from kdlab.engine.recipe import load_recipe
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from kdlab.testing import _TermProbe, check_method

# Settings a method needs that have no default, and whether it supplies a loss term itself.
REQUIRED = {"pruning": {"sparsity": 0.5}, "reviewkd": {"student": ["feat", "emb"], "teacher": ["feat", "emb"]},
            "minilm": {"pairs": {"feat": "feat"}, "relation_heads": 2},
            # the compact CNN's block 1 is conv, BatchNorm (blocks.1.1, tapped as `pre`), ReLU, pool
            "ofd": {"student": "pre", "teacher": "pre"},
            "vitkd": {"low_student": ["feat"], "low_teacher": ["feat"]},
            "ft": {"paraphraser_epochs": 1}}
SUPPLIES_LOSS = {"supervised", "logit_kd", "ctc", "ctc_kd", "lm"}
# Methods for sequence models (CTC): checked on a tiny phoneme corpus instead of digits.
SEQUENCE = {"ctc", "ctc_kd"}
# Methods for language models: checked on a tiny generated dialogue corpus.
TEXT = {"lm", "token_kd", "seq_kd", "gkd", "minilm", "draft_acceptance"}
# Methods that add no loss term: precision, speed, pruning, caching, export, metrics.
NO_TERMS = {"amp", "channels_last", "compile", "feature_metrics", "fp16_export", "grad_clip", "pruning", "teacher_cache",
            "draft_acceptance"}

TEXT_RECIPE = """
name = "conformance_text"
device = "cpu"
[data]
dataset = "text"
dir = "{corpus}"
seq_len = 64
vocab_size = 320
batch_size = 16            # 32 training dialogues: two steps per epoch
[plugins.progress]
enabled = false
[plugins.lm_metrics]
dialogues = 4
candidates = 3
max_new_tokens = 4
[defaults]
epochs = 1
model = {{ arch = "transformer_lm", layers = 1, width = 16, heads = 2 }}
[stages.teacher]
methods.lm = {{}}
[stages.student]
teachers = ["teacher"]
taps = {{ student = {{ feat = "hf.model.layers.0.self_attn.v_proj" }}, teacher = {{ feat = "hf.model.layers.0.self_attn.v_proj" }} }}
{methods}
"""

SPEECH_RECIPE = """
name = "conformance_speech"
device = "cpu"
[data]
dataset = "phonemes"
manifest = "{manifest}"
batch_size = 3            # 6 training utterances: two steps per epoch
[plugins.progress]
enabled = false
[defaults]
epochs = 1
model = {{ arch = "conformer_ctc", dim = 8, layers = 1, heads = 2, ffn = 8, subsample_channels = 2 }}
[stages.teacher]
model = {{ arch = "wav2vec2_ctc", conv_dim = 8, dim = 16, layers = 1, heads = 2, ffn = 16 }}
methods.ctc = {{}}
[stages.student]
teachers = ["teacher"]
{methods}
"""

RECIPE = """
name = "conformance"
device = "cpu"
[data]
dataset = "digits"
batch_size = 600          # ~1,080 training images: two steps per epoch
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[defaults]
epochs = 1
model = {{ arch = "cnn", channels = [4, 8] }}
[stages.teacher]
methods.supervised = {{}}
[stages.student]
teachers = ["teacher", "teacher"]   # two, for multi-teacher methods
taps = {{ student = {{ emb = "embed", feat = "blocks.1", pre = "blocks.1.1" }}, teacher = {{ emb = "embed", feat = "blocks.1", pre = "blocks.1.1", head = "head" }} }}
{methods}
"""


def _toml_table(values: dict) -> str:
    return "{ " + ", ".join(f"{k} = {_toml_table(v) if isinstance(v, dict) else repr(v)}" for k, v in values.items()) + " }"


@pytest.mark.parametrize("method", discover().methods)
def test_method_trains_two_steps_and_its_terms_reach_the_student(method, write_recipe, tmp_path):
    methods = [f"methods.{method} = {_toml_table(REQUIRED.get(method, {}))}"]
    companion = None if method in SUPPLIES_LOSS else "lm" if method in TEXT else "supervised"
    if companion:
        methods.append(f"methods.{companion} = {{}}")
    probing = discover(extra={"_probe": _TermProbe})
    _TermProbe.seen, _TermProbe.base = None, frozenset({"lm": {"lm"}, "supervised": {"ce"}}.get(companion, ()))
    if method in TEXT:
        pytest.importorskip("transformers")
        from tests.data.test_text import make_dialogues

        text = TEXT_RECIPE.format(corpus=make_dialogues(tmp_path / "corpus"), methods="\n".join(methods))
        result = run(write_recipe(text), out=tmp_path, catalogue=probing)
        assert math.isfinite(result.metrics["student"]["test/perplexity"])
    elif method in SEQUENCE:
        from tests.data.test_phonemes import make_phoneme_corpus

        text = SPEECH_RECIPE.format(manifest=make_phoneme_corpus(tmp_path / "corpus"), methods="\n".join(methods))
        result = run(write_recipe(text), out=tmp_path, catalogue=probing)
        assert math.isfinite(result.metrics["student"]["test/per"])
    else:
        result = run(write_recipe(RECIPE.format(methods="\n".join(methods))), out=tmp_path, catalogue=probing)
        assert math.isfinite(result.metrics["student"]["test/loss"])
    last = __import__("torch").load(result.run_dir / "checkpoints/student/last.pt", weights_only=True)
    assert last["step"] == 2
    own = _TermProbe.seen["values"]
    # what the method declares (kdlab validate relies on it) is what it returns
    recipe = load_recipe(result.run_dir / "recipe.toml", probing)
    table = recipe.stages["student"].methods[method]
    declared = probing.plugins[method].factory.requires(table, stage_view(recipe, "student")).terms
    assert declared == set(own), f"{method} declares the terms {sorted(declared)}, returns {sorted(own)}"
    if method in NO_TERMS:
        assert own == {}, f"{method} adds loss terms {sorted(own)}"
        return
    assert own, f"{method} adds no loss term"
    assert all(math.isfinite(v) and v != 0 for v in own.values()), own
    assert _TermProbe.seen["changes_gradient"], f"{method}'s terms {sorted(own)} do not reach the student"


# check_method composes each method with logit_kd (so supervised and logit_kd are checked in
# every other method's runs). torch.compile would compile the tiny model for
# each of the runs (minutes); it is checked in tests/infra/test_compile.py. The sequence and
# text methods need other data.
CHECKED = [m for m in discover().methods if m not in SEQUENCE | TEXT | {"compile", "supervised", "logit_kd"}]
TAPS = {"student": {"emb": "embed", "feat": "blocks.1", "pre": "blocks.1.1"},
        "teacher": {"emb": "embed", "feat": "blocks.1", "pre": "blocks.1.1", "head": "head"}}
# smaller than the defaults, for the CPU: CRD's 16,384 negatives per sample and RKD's angle term
# (batch^3 triplets) take minutes at check_method's batch of 539
CHECK_CONFIG = {"crd": {"negatives": 256, "feat_dim": 16}, "rkd": {"angle_weight": 0.0},
                "reviewkd": {"warmup_epochs": 1}}  # and its warm-up's state across a resume


# check_method's teacher is twice the student's width: FSP and KDSVD compare taps of equal
# widths, the student's second block (8 channels) with the teacher's first
EQUAL_WIDTH = {"student": {"feat": "blocks.1"}, "teacher": {"feat": "blocks.0"}}
CHECK_TAPS = {"fsp": EQUAL_WIDTH, "kdsvd": EQUAL_WIDTH, "dist_plus": EQUAL_WIDTH}
CHECK_CONFIG.update({m: {"student": ["feat", "feat"], "teacher": ["feat", "feat"]} for m in ("fsp", "kdsvd")})


@pytest.mark.parametrize("method", CHECKED)
def test_method_passes_check_method(method, tmp_path):
    config = {**REQUIRED.get(method, {}), **CHECK_CONFIG.get(method, {})}
    check_method(method, config, taps=CHECK_TAPS.get(method, TAPS), terms=method not in NO_TERMS, teachers=2 if method == "triplet_ae" else 1,
                 workdir=tmp_path)


def test_all_methods_compose_in_one_stage(write_recipe, tmp_path, catalogue):
    """Every method at once (supervised aside: logit_kd supplies the `ce` term), with AMP and
    pruning: loss terms add up, extra modules coexist, and the geometry metric is reported."""
    # channels_last refuses pruning (tested in tests/infra/test_channels_last.py)
    methods = [m for m in catalogue.methods if m not in ("supervised", "channels_last") and m not in SEQUENCE | TEXT]
    lines = [f"methods.{m} = {_toml_table(REQUIRED.get(m, {}))}" for m in methods]
    text = RECIPE.format(methods="\n".join(lines)).replace("[plugins.tensorboard]\nenabled = false",
                                                          "[plugins.tensorboard]\nlog_every = 1")
    result = run(write_recipe(text), out=tmp_path, catalogue=catalogue)
    metrics = result.metrics["student"]
    assert {"test/geometry_preservation", "test/cka", "test/sparsity"} <= set(metrics)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(result.run_dir / "tb" / "student"))
    acc.Reload()
    terms = {t for t in acc.Tags()["scalars"] if t.startswith("loss/")}
    assert terms == {"loss/total", "loss/ce", "loss/kd", "loss/hint", "loss/geometry", "loss/contrastive",
                     "loss/ae_recon", "loss/triplet", "loss/latent_kd", "loss/dkd", "loss/dist", "loss/at", "loss/sp",
                     "loss/rkd", "loss/pkt", "loss/cc", "loss/nst", "loss/vid", "loss/crd", "loss/reviewkd",
                     "loss/nkd", "loss/uskd", "loss/ctkd", "loss/fsp", "loss/ab", "loss/kdsvd", "loss/mlkd",
                     "loss/dist_plus", "loss/ft", "loss/ofd", "loss/srrl", "loss/vitkd"}
    assert {"geometry/student", "geometry/teacher"} <= set(acc.Tags()["images"])


def test_sequence_methods_compose_with_cache_amp_and_clipping(write_recipe, tmp_path, catalogue):
    from tests.data.test_phonemes import make_phoneme_corpus

    lines = ['methods.ctc_kd = { strategy = "blank_weighted", min_weight = 0.1 }', "methods.teacher_cache = { topk = 3 }",
             "methods.amp = {}", "methods.grad_clip = { max_norm = 1.0 }", "methods.pruning = { sparsity = 0.3 }"]
    text = SPEECH_RECIPE.format(manifest=make_phoneme_corpus(tmp_path / "corpus"), methods="\n".join(lines))
    metrics = run(write_recipe(text), out=tmp_path, catalogue=catalogue).metrics["student"]
    assert 0 <= metrics["test/per"] and metrics["test/sparsity"] == __import__("pytest").approx(0.3, abs=0.01)


def test_language_model_methods_compose_with_cache_amp_and_clipping(write_recipe, tmp_path, catalogue):
    """Every language-model method in one stage, with the top-k teacher cache, AMP and clipping:
    the loss terms add up and the dialogue metrics are reported."""
    pytest.importorskip("transformers")
    from tests.data.test_text import make_dialogues

    lines = ["methods.lm = {}", 'methods.token_kd = { divergence = "skew_kl" }', "methods.seq_kd = { max_new_tokens = 4 }",
             "methods.gkd = { fraction = 0.5, max_new_tokens = 4 }", 'methods.minilm = { pairs = { feat = "feat" }, relation_heads = 2 }',
             "methods.teacher_cache = { topk = 8 }", "methods.amp = {}", "methods.grad_clip = { max_norm = 1.0 }"]
    text = TEXT_RECIPE.format(corpus=make_dialogues(tmp_path / "corpus"), methods="\n".join(lines))
    text = text.replace("[plugins.progress]", "[plugins.tensorboard]\nlog_every = 1\n[plugins.progress]")
    result = run(write_recipe(text), out=tmp_path, catalogue=catalogue)
    metrics = result.metrics["student"]
    assert {"test/hits@1", "test/token_f1", "test/memory_recall", "macs_per_token", "train_tokens_per_s"} <= set(metrics)
    assert 0 <= metrics["test/hits@1"] <= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(result.run_dir / "tb" / "student"))
    acc.Reload()
    assert {t for t in acc.Tags()["scalars"] if t.startswith("loss/")} == {
        "loss/total", "loss/lm", "loss/token_kd", "loss/seq_kd", "loss/gkd", "loss/minilm"}
    assert (result.run_dir / "tokenizer.json").is_file()
