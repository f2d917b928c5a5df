"""The teacher-output cache gives the same training as running the teacher, reads a valid disk
cache instead of running the teacher, never uses a stale one, and refuses augmented data."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab import KdlabError, hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from kdlab.plugins.datasets import DigitsConfig, load_digits_tensors
from tests.conftest import TINY, state_dicts_equal
from tests.plugins.test_datasets import make_cifar

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


def test_a_different_teacher_never_uses_a_stale_cache(write_recipe, tmp_path, catalogue):
    recipe = write_recipe(CACHED.replace("CACHE", str(tmp_path / "cache")))
    run(recipe, out=tmp_path / "a", catalogue=catalogue)
    run(recipe, out=tmp_path / "b", overrides=["seed=1"], catalogue=catalogue)  # another teacher
    assert len(list((tmp_path / "cache").iterdir())) == 6


def test_augmented_data_is_refused(write_recipe, tmp_path, catalogue):
    make_cifar(tmp_path / "data")
    text = CACHED.replace('dataset = "digits"', f'dataset = "cifar10"\nroot = "{tmp_path / "data"}"\nval_size = 4'
                          ).replace('\ntaps = { student = { emb = "embed" }, teacher = { emb = "embed" } }\n'
                                    'methods.feature_metrics = {}', "").replace(' dir = "CACHE" ', "")
    with pytest.raises(KdlabError, match="teacher_cache: the training inputs are randomly augmented"):
        run(write_recipe(text), out=tmp_path / "runs", catalogue=catalogue)
