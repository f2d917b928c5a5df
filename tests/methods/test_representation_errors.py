"""Bad configuration of the representation methods: clear errors naming the key."""

from __future__ import annotations

import pytest

from kdlab import KdlabError
from kdlab.engine.errors import RecipeError
from kdlab.engine.runner import run

BASE = """
name = "bad"
device = "cpu"
[data]
dataset = "digits"
batch_size = 600
[plugins.progress]
enabled = false
[defaults]
epochs = 1
model = { arch = "cnn", channels = [4, 8] }
[stages.teacher]
methods.supervised = {}
[stages.student]
teachers = ["teacher"]
taps = { student = { emb = "embed" }, teacher = { emb = "embed" } }
methods.supervised = {}
"""


@pytest.mark.parametrize(("method", "error", "message"), [
    ("feature_kd = { student = \"emb\", teacher = \"nope\" }", KdlabError,
     "stages.student.methods.feature_kd.teacher: no tap 'nope' in stages.student.taps.teacher (taps: emb)"),
    ("geometry = {}", None, None),
    ("geometry = { student = \"x\" }", KdlabError,
     "stages.student.methods.geometry.student: no tap 'x' in stages.student.taps.student (taps: emb)"),
    ("geometry = { teacher_index = 2 }", KdlabError,
     "stages.student.methods.geometry.teacher_index: 2, but the stage has 1 teacher(s)"),
    ("triplet_ae = {}", KdlabError, "stages.student.methods.triplet_ae needs 2 teachers, the stage lists 1"),
    ("triplet_ae = { margin = -0.5 }", RecipeError, "margin must be >= 0, got -0.5 @ $.stages.student.methods.triplet_ae.margin"),
    ("contrastive = { tau = 0 }", RecipeError, "tau must be > 0, got 0"),
    ("feature_metrics = { student = \"feat\" }", KdlabError, "no tap 'feat' in stages.student.taps.student"),
])
def test_bad_configuration(write_recipe, tmp_path, catalogue, method, error, message):
    recipe = write_recipe(BASE + f"methods.{method}\n")
    if error is None:
        run(recipe, out=tmp_path, catalogue=catalogue)
        return
    with pytest.raises(error) as info:
        run(recipe, out=tmp_path, catalogue=catalogue)
    assert message in str(info.value)


def test_tap_of_a_missing_module(write_recipe, tmp_path, catalogue):
    recipe = write_recipe(BASE.replace('teacher = { emb = "embed" }', 'teacher = { emb = "blocks.7" }'))
    with pytest.raises(KdlabError, match=r"recipe.toml:\d+: no module 'blocks.7' in the cnn teacher.* @ \$.stages.student.taps.teacher.emb"):
        run(recipe, out=tmp_path, catalogue=catalogue)


WIDE = BASE.replace('[stages.student]\n', '[stages.student]\nmodel = { arch = "cnn", channels = [4, 6] }\n').replace(
    'taps = { student = { emb = "embed" }, teacher = { emb = "embed" } }',
    'taps = { student = { feat = "blocks.1", pre = "blocks.1.1" }, '
    'teacher = { feat = "blocks.1", pre = "blocks.1.1", head = "head", relu = "blocks.1.2" } }')


@pytest.mark.parametrize(("method", "message"), [
    ('ofd = { student = "pre", teacher = "relu" }',
     "stages.student.methods.ofd.teacher: the teacher tap 'relu' is a ReLU; OFD reads its margins from the affine "
     "BatchNorm2d before the ReLU (name it in teacher_bn)"),
    ('ofd = { student = "pre", teacher = "relu", teacher_bn = "feat" }',
     "stages.student.methods.ofd.teacher_bn: the teacher tap 'feat' is a Sequential"),
    ('ofd = { student = ["pre", "feat"], teacher = ["pre", "feat"], teacher_bn = "pre" }',
     "lists 1 BatchNorm tap(s) for 2 pair(s)"),
    ('srrl = { teacher_head = "relu" }',
     "stages.student.methods.srrl.teacher_head: the teacher tap 'relu' is a ReLU; SRRL passes the student's feature "
     "through the teacher's linear classifier"),
    ('dist_plus = {}', "stages.student.methods.dist_plus: student tap 'feat' has 6 channels, teacher tap 'feat' 8"),
    ('vitkd = { low_student = ["feat", "pre"], low_teacher = ["feat"] }', "low_student and low_teacher must pair up"),
])
def test_bad_configuration_of_the_methods_that_read_modules(write_recipe, tmp_path, catalogue, method, message):
    with pytest.raises((KdlabError, RecipeError)) as info:
        run(write_recipe(WIDE + f"methods.{method}\n"), out=tmp_path, catalogue=catalogue)
    assert message in str(info.value)
    assert not (tmp_path / "runs").exists() or not list((tmp_path).rglob("models/student.pt"))
