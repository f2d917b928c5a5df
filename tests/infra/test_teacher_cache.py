"""The teacher-output cache gives the same training as running the teacher, reads a valid disk
cache instead of running the teacher, never uses a stale one, and refuses augmented data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab import KdlabError, hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from kdlab.data.vision import DigitsConfig, load_digits_tensors
from tests.conftest import TINY, state_dicts_equal
from tests.data.test_vision import make_cifar

CACHED = TINY.replace('methods.logit_kd = { temperature = 4.0, alpha = 0.5 }',
                      'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }\n'
                      'taps = { student = { emb = "embed" }, teacher = { emb = "embed" } }\n'
                      'methods.feature_metrics = {}\nmethods.teacher_cache = { dir = "CACHE" }')


class CountTeacherCalls:
    default_enabled = True
    calls = 0

    @hookimpl(tryfirst=True)
    def kdlab_stage_start(self, stage):
        for teacher in stage.teachers:
            teacher.register_forward_hook(lambda *a: setattr(CountTeacherCalls, "calls", CountTeacherCalls.calls + 1))


def _student(result):
    return torch.load(result.run_dir / "models/student.pt", weights_only=True)["state_dict"]


def test_cached_training_equals_uncached_and_disk_cache_is_reused(write_recipe, tmp_path):
    cat = discover(extra={"count": CountTeacherCalls})
    plain = run(write_recipe(CACHED.replace('\nmethods.teacher_cache = { dir = "CACHE" }', "")),
                out=tmp_path / "a", catalogue=cat)
    uncached_calls, CountTeacherCalls.calls = CountTeacherCalls.calls, 0
    recipe = write_recipe(CACHED.replace("CACHE", str(tmp_path / "cache")), name="cached.toml")
    first = run(recipe, out=tmp_path / "b", catalogue=cat)
    first_calls, CountTeacherCalls.calls = CountTeacherCalls.calls, 0
    assert state_dicts_equal(_student(plain), _student(first))
    assert first.metrics["student"]["test/accuracy"] == plain.metrics["student"]["test/accuracy"]
    assert first.metrics["student"]["test/cka"] == pytest.approx(plain.metrics["student"]["test/cka"], abs=1e-6)
    # uncached: every step of 2 epochs and 4 evaluations (val twice, final val and test; the
    # teachers run there because feature_metrics takes their outputs); cached: one pass per split
    steps = math.ceil(len(load_digits_tensors(DigitsConfig())[0][0]) / 64)
    assert uncached_calls == 2 * steps + 4
    assert first_calls == steps + 2
    assert len(list((tmp_path / "cache").iterdir())) == 3  # train, val, test
    # a second run with the same teacher file reads the cache from disk: no teacher forward at all
    teacher_file = first.run_dir / "models" / "teacher.pt"
    reuse = CACHED.replace("CACHE", str(tmp_path / "cache")).split("[stages.teacher]")[0] + f"""
[stages.student]
teachers = ["{teacher_file}"]
taps = {{ student = {{ emb = "embed" }}, teacher = {{ emb = "embed" }} }}
methods.logit_kd = {{ temperature = 4.0, alpha = 0.5 }}
methods.teacher_cache = {{ dir = "{tmp_path / 'cache'}" }}
"""
    second = run(write_recipe(reuse, name="reuse.toml"), out=tmp_path / "c", catalogue=cat)
    assert CountTeacherCalls.calls == 0
    assert state_dicts_equal(_student(first), _student(second))


@pytest.mark.parametrize("damage", ["truncate", "short"])
def test_a_damaged_cache_file_is_one_clear_error(write_recipe, tmp_path, catalogue, damage):
    import numpy as np

    recipe = write_recipe(CACHED.replace("CACHE", str(tmp_path / "cache")))
    run(recipe, out=tmp_path / "a", run_id="r", catalogue=catalogue)
    train = max((tmp_path / "cache").iterdir(), key=lambda d: len(np.load(d / "t0%2Flogits.npy")))
    logits = train / "t0%2Flogits.npy"
    if damage == "truncate":
        logits.write_bytes(logits.read_bytes()[:200])
    else:
        np.save(logits, np.load(logits)[:10])
    (tmp_path / "a/tiny/r/models/student.pt").unlink()
    import shutil

    shutil.rmtree(tmp_path / "a/tiny/r/checkpoints/student")
    with pytest.raises(KdlabError, match="delete the directory to rebuild it"):
        run(recipe, out=tmp_path / "a", run_id="r", catalogue=catalogue)


def test_a_different_teacher_never_uses_a_stale_cache(write_recipe, tmp_path, catalogue):
    recipe = write_recipe(CACHED.replace("CACHE", str(tmp_path / "cache")))
    run(recipe, out=tmp_path / "a", catalogue=catalogue)
    run(recipe, out=tmp_path / "b", overrides=["seed=1"], catalogue=catalogue)  # another teacher
    assert len(list((tmp_path / "cache").iterdir())) == 6


def test_augmented_data_is_refused(write_recipe, tmp_path, catalogue):
    make_cifar(tmp_path / "data")
    text = CACHED.replace('dataset = "digits"', f'dataset = "cifar10"\nroot = "{tmp_path / "data"}"\nval_size = 4\nverify = false'
                          ).replace('\ntaps = { student = { emb = "embed" }, teacher = { emb = "embed" } }\n'
                                    'methods.feature_metrics = {}', "").replace(' dir = "CACHE" ', "")
    # found before anything trains (kdlab validate finds it too)
    with pytest.raises(KdlabError, match=r"teacher_cache.views: the training data is augmented .* set views"):
        run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(KdlabError, match=r"teacher_cache.views: the training data is not augmented"):
        run(write_recipe(CACHED.replace(' dir = "CACHE" ', " views = 4 ")), out=tmp_path / "runs", catalogue=catalogue)


class FixViews:
    """Shows the student stage the same fixed views the cache replays, with the teacher running."""

    default_enabled = True

    @hookimpl
    def kdlab_stage_start(self, stage):
        stage.data.train.fix_views(3 if stage.name == "student" else None)


AUGMENTED = TINY.replace('batch_size = 64', 'batch_size = 64\naugment = true')


def test_view_cache_trains_like_the_live_teacher_on_the_same_views(write_recipe, tmp_path):
    """views = 3: the student trained from the stored outputs is bit-identical to one trained
    with the teacher running on the very views the loader replays; the teacher runs once per
    (sample, view) and the cache holds 3 rows per training sample."""
    live = run(write_recipe(AUGMENTED), out=tmp_path / "a", catalogue=discover(extra={"views": FixViews}))
    cat = discover(extra={"count": CountTeacherCalls})
    CountTeacherCalls.calls = 0
    cached = run(write_recipe(AUGMENTED.replace("alpha = 0.5 }", f"alpha = 0.5 }}\nmethods.teacher_cache = {{ views = 3, "
                                                f"dir = '{tmp_path / 'cache'}' }}"), "cached.toml"),
                 out=tmp_path / "b", catalogue=cat)
    assert state_dicts_equal(_student(live), _student(cached))
    n = len(load_digits_tensors(DigitsConfig())[0][0])
    assert CountTeacherCalls.calls == math.ceil(3 * n / 64)  # one labelling pass; evaluation needs no teacher
    train = [d for d in (tmp_path / "cache").iterdir() if len(np.load(d / "t0%2Flogits.npy")) == 3 * n]
    assert len(train) == 1
    # the data set is shared by the stages: the views end with the cached stage
    free = run(write_recipe(AUGMENTED), out=tmp_path / "c", catalogue=discover())
    assert not state_dicts_equal(_student(free), _student(cached))


def test_topk_classifier_cache_keeps_the_distillation_target(write_recipe, tmp_path, catalogue):
    """topk = all classes stores log-probabilities (fp16): softmax(log p / T) is softmax(z / T),
    so the student trains almost as with the logits; topk = 3 stores 3 of 10 and trains differently."""
    base = CACHED.replace('\ntaps = { student = { emb = "embed" }, teacher = { emb = "embed" } }\n'
                          'methods.feature_metrics = {}', "")
    full = run(write_recipe(base.replace(' dir = "CACHE" ', " ")), out=tmp_path / "a", catalogue=catalogue)
    top10 = run(write_recipe(base.replace(' dir = "CACHE" ', " topk = 10 "), "t10.toml"), out=tmp_path / "b",
                catalogue=catalogue)
    top3 = run(write_recipe(base.replace(' dir = "CACHE" ', " topk = 3 "), "t3.toml"), out=tmp_path / "c",
               catalogue=catalogue)
    a, b, c = _student(full), _student(top10), _student(top3)
    d10, d3 = (max(float((a[k] - x[k]).abs().max()) for k in a) for x in (b, c))
    assert d10 < 0.02 and d3 > 5 * d10  # fp16 log-probabilities drift a little; 3 of 10 classes a lot


def test_sequence_teacher_cache_gives_identical_students_and_topk_is_close(tmp_path, catalogue):
    from kdlab.engine import checkpoint
    from kdlab.engine.runner import run
    from kdlab.engine.types import TopK
    from tests.data.test_phonemes import make_phoneme_corpus

    manifest = make_phoneme_corpus(tmp_path / "corpus", per_split=(8, 2, 2))
    text = f"""
name = "ctc_cache"
device = "cpu"
[data]
dataset = "phonemes"
manifest = "{manifest}"
batch_size = 3
[plugins.progress]
enabled = false
[defaults]
epochs = 1  # later epochs batch utterances differently: the live teacher then differs by rounding
model = {{ arch = "conformer_ctc", dim = 8, layers = 1, heads = 2, ffn = 8, subsample_channels = 2 }}
[stages.teacher]
model = {{ arch = "wav2vec2_ctc", conv_dim = 8, dim = 16, layers = 1, heads = 2, ffn = 16 }}
methods.ctc = {{}}
[stages.live]
teachers = ["teacher"]
methods.ctc_kd = {{ strategy = "posterior" }}
[stages.cached]
teachers = ["teacher"]
methods.ctc_kd = {{ strategy = "posterior" }}
methods.teacher_cache = {{ dir = "{tmp_path / 'cache'}" }}
"""
    (tmp_path / "r.toml").write_text(text)
    result = run(tmp_path / "r.toml", out=tmp_path / "runs", catalogue=catalogue)
    models = {s: checkpoint.load_model_file(result.run_dir / "models" / f"{s}.pt")["state_dict"] for s in ("live", "cached")}
    assert all(torch.equal(models["live"][k], models["cached"][k]) for k in models["live"])
    assert any((tmp_path / "cache").glob("*/t0%2Foffsets.npy"))
    # top-k keeps the k largest log-probabilities exactly and the total mass at 1
    logp = torch.log_softmax(torch.randn(5, 7), -1)
    values, index = logp.topk(3, -1)
    full = TopK(values, index, 7).dense()
    assert torch.allclose(full.exp().sum(-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(full.gather(-1, index), values)


def test_cache_key_follows_the_resolved_autocast_dtype_and_the_device():
    from types import SimpleNamespace

    from kdlab.engine.recipe import TapsConfig
    from kdlab.infra.teacher_cache import cache_key
    from kdlab.methods.amp import AmpConfig

    def key(amp, device):
        methods = {"amp": amp} if amp is not None else {}
        config = SimpleNamespace(taps=TapsConfig(), teachers=("t",), methods=methods)
        return cache_key(_fake_stage(config, device), "train", ["abc"])

    # "auto" is bf16 on the CPU: the same outputs as asking for bf16, others than fp16 or none
    assert key(AmpConfig(dtype="auto"), "cpu") == key(AmpConfig(dtype="bf16"), "cpu")
    assert key(AmpConfig(dtype="auto"), "cpu") != key(AmpConfig(dtype="fp16"), "cpu")
    assert key(None, "cpu") != key(None, "meta")  # another device computes other outputs


def test_language_model_teacher_cache_top_k(write_recipe, tmp_path, catalogue):
    """A language-model teacher's per-token outputs are cached like a classifier's (one row of
    (length, vocab) per sequence): the full cache trains the student exactly as the live teacher;
    top-k with every token kept stays close (fp16 log-probabilities); top-2 drifts further (the
    barely trained teacher is nearly flat, so not by much)."""
    pytest.importorskip("transformers")
    from kdlab.engine import checkpoint
    from tests.data.test_text import make_dialogues
    from tests.methods.test_conformance import TEXT_RECIPE

    stages = ""
    for name, cache in (("live", ""), ("full", "methods.teacher_cache = {}"), ("top_all", "methods.teacher_cache = { topk = 320 }"),
                        ("top2", "methods.teacher_cache = { topk = 2 }")):
        stages += f'\n[stages.{name}]\nteachers = ["teacher"]\nmethods.token_kd = {{}}\n{cache}\n'
    text = TEXT_RECIPE.format(corpus=make_dialogues(tmp_path / "corpus"), methods="methods.token_kd = {}")
    text = text.split("[stages.student]")[0] + stages
    result = run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
    w = {s: checkpoint.load_model_file(result.run_dir / "models" / f"{s}.pt")["state_dict"] for s in ("live", "full", "top_all", "top2")}
    gap = {s: max(float((w["live"][k] - w[s][k]).abs().max()) for k in w["live"]) for s in ("full", "top_all", "top2")}
    assert gap["full"] < 1e-6 and gap["top_all"] < 5e-3 and gap["top2"] > 1.5 * gap["top_all"], gap
    # the share of the teacher's mass the top k keep is a stage metric: all of it at k = V
    m = result.metrics
    assert m["top_all"]["teacher_cache/train_topk_mass"] == pytest.approx(1.0, abs=2e-3)
    assert 0 < m["top2"]["teacher_cache/train_topk_mass_min"] <= m["top2"]["teacher_cache/train_topk_mass"] < 0.99
    assert "teacher_cache/train_topk_mass" not in m["full"]


def test_a_tap_alias_with_double_underscores_is_read_back_from_the_disk_cache(write_recipe, tmp_path, catalogue):
    """Tensor names were file names with "/" as "__": an alias "my__emb" came back as "my/emb"
    and the second run (reading the disk cache) failed with a KeyError."""
    text = CACHED.replace("CACHE", str(tmp_path / "cache")).replace(
        'teacher = { emb = "embed" }', 'teacher = { emb = "embed", my__emb = "embed" }')
    first = run(write_recipe(text), out=tmp_path / "a", catalogue=catalogue)
    second = run(write_recipe(text, name="again.toml"), out=tmp_path / "b", catalogue=catalogue)
    assert state_dicts_equal(_student(first), _student(second))
    assert second.metrics["student"]["test/cka"] == pytest.approx(first.metrics["student"]["test/cka"], abs=1e-6)
    assert any((tmp_path / "cache").glob("*/t0%2Fmy__emb.npy"))


def test_sequence_top_k_indices_fit_a_gpt2_sized_vocabulary():
    """Top-k indices were int16: past 32,767 (GPT-2's 50,257 tokens) they came back negative."""
    from kdlab.engine.types import TopK
    from kdlab.infra.teacher_cache import _compact_sequences

    vocab = 50_257
    frames = torch.full((3, vocab), -20.0)
    frames[0, 50_000], frames[1, 40_000], frames[2, 7] = 0.0, -0.1, -0.2  # the most probable classes
    frames = torch.log_softmax(frames, -1)
    out = _compact_sequences({0: frames[:2], 1: frames[2:]}, torch.float32, 2, 0)
    index = out["t0/topk_index"]
    assert int(index.min()) >= 0 and int(index[0, 0]) == 50_000 and int(index[1, 0]) == 40_000
    full = TopK(out["t0/topk_values"][:2], index[:2], vocab).dense()
    assert full.argmax(-1).tolist() == [50_000, 40_000]


@pytest.mark.parametrize("damage", ["bitflip", "noise", "int_dtype", "fewer_classes"])
def test_damaged_cache_data_is_never_used(write_recipe, tmp_path, catalogue, damage):
    """A flipped bit, noise in place of the logits, an int dtype or 5 classes instead of 10 were
    used silently (or gave a traceback): now one error naming the file."""
    recipe = write_recipe(CACHED.replace("CACHE", str(tmp_path / "cache")))
    run(recipe, out=tmp_path / "a", run_id="r", catalogue=catalogue)
    train = max((tmp_path / "cache").iterdir(), key=lambda d: len(np.load(d / "t0%2Flogits.npy")))
    logits = train / "t0%2Flogits.npy"
    original = np.load(logits)
    if damage == "bitflip":
        data = bytearray(logits.read_bytes())
        data[-7] ^= 0x10
        logits.write_bytes(bytes(data))
    elif damage == "noise":
        np.save(logits, np.random.default_rng(0).standard_normal(original.shape).astype(original.dtype))
    elif damage == "int_dtype":
        np.save(logits, original.astype(np.int32))
    else:
        np.save(logits, original[:, :5])
    import shutil

    (tmp_path / "a/tiny/r/models/student.pt").unlink()
    shutil.rmtree(tmp_path / "a/tiny/r/checkpoints/student")
    with pytest.raises(KdlabError, match=r"t0%2Flogits\.npy.*delete the directory to rebuild it"):
        run(recipe, out=tmp_path / "a", run_id="r", catalogue=catalogue)


def _fake_stage(config, device="cpu"):
    """The parts of a stage that the cache key reads."""
    from types import SimpleNamespace

    return SimpleNamespace(config=config, data=SimpleNamespace(key={"dataset": "digits"}), device=torch.device(device),
                           teachers=[torch.nn.Linear(2, 2)], catalogue=discover(),
                           recipe=SimpleNamespace(data=SimpleNamespace(name="digits"), seed=0))


def test_the_cache_key_follows_the_teacher_model_code(monkeypatch):
    from types import SimpleNamespace

    from kdlab.engine import stage_store
    from kdlab.engine.recipe import TapsConfig
    from kdlab.infra.teacher_cache import cache_key

    stage = _fake_stage(SimpleNamespace(taps=TapsConfig(), teachers=("t",), methods={}))
    monkeypatch.setattr(stage_store, "_source_digest", lambda top: "same")
    before = cache_key(stage, "train", ["abc"])
    monkeypatch.setattr(stage_store, "_source_digest", lambda top: "edited" if top == "torch" else "same")
    assert cache_key(stage, "train", ["abc"]) != before  # the teacher's class is torch's: its source is in the key
    monkeypatch.setattr(stage_store, "_source_digest", lambda top: "edited" if top == "numpy" else "same")
    assert cache_key(stage, "train", ["abc"]) == before  # a package the outputs do not depend on
