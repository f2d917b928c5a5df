"""Tap paths are checked against the built models (on the meta device) before anything trains."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from kdlab import hookimpl
from kdlab.engine.errors import RecipeError
from kdlab.engine.runner import run
from tests.conftest import TINY

TAPPED = TINY.replace("methods.logit_kd = { temperature = 4.0, alpha = 0.5 }",
                      'taps = { student = { emb = "embed" }, teacher = { emb = "TEACHER_PATH" } }\n'
                      'methods.feature_kd = { student = "emb", teacher = "emb" }')


def test_validate_names_file_line_and_key_of_a_missing_tap(write_recipe):
    recipe = write_recipe(TAPPED.replace("TEACHER_PATH", "blocks.9"))
    result = subprocess.run([sys.executable, "-m", "kdlab", "validate", str(recipe)], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = next(n for n, text in enumerate(recipe.read_text().splitlines(), 1) if text.startswith("taps ="))
    assert (f"{recipe}:{line}: no module 'blocks.9' in the cnn teacher; some that exist: blocks.1"
            in result.stderr), result.stderr
    assert "@ $.stages.student.taps.teacher.emb" in result.stderr
    assert "'embed'" not in result.stderr  # the student's tap exists


def test_a_valid_tap_passes_validate(write_recipe):
    recipe = write_recipe(TAPPED.replace("TEACHER_PATH", "embed"))
    result = subprocess.run([sys.executable, "-m", "kdlab", "validate", str(recipe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_run_refuses_a_missing_tap_before_the_first_stage_trains(write_recipe, tmp_path, catalogue):
    recipe = write_recipe(TAPPED.replace("TEACHER_PATH", "blocks.9"))
    with pytest.raises(RecipeError, match="no module 'blocks.9'"):
        run(recipe, out=tmp_path, run_id="r", catalogue=catalogue)
    assert not (tmp_path / "tiny/r/models/teacher.pt").exists()


def test_a_tap_set_in_defaults_points_at_the_defaults_line(write_recipe, catalogue):
    from kdlab.engine.preflight import check_taps
    from kdlab.engine.recipe import load_recipe

    text = TINY.replace("[defaults]\n", '[defaults]\ntaps = { student = { emb = "nowhere" } }\n')
    recipe = write_recipe(text.replace("methods.logit_kd = { temperature = 4.0, alpha = 0.5 }", "methods.feature_kd = {}")
                          .replace('model = { arch = "cnn", channels = [8, 16] }',
                                   'model = { arch = "cnn", channels = [8, 16] }\ntaps = { student = { emb = "embed" } }'))
    with pytest.raises(RecipeError) as info:
        check_taps(load_recipe(recipe, catalogue), catalogue, recipe)
    assert str(info.value).count("no module 'nowhere'") == 1  # the teacher stage overrides it
    line = next(n for n, text in enumerate(recipe.read_text().splitlines(), 1) if "nowhere" in text)
    assert f"{recipe}:{line}: no module 'nowhere'" in str(info.value)


def test_supervised_classes_outside_the_data_set_are_refused_before_training(write_recipe, tmp_path, catalogue):
    recipe = write_recipe(TINY.replace("methods.supervised = {}", "methods.supervised = { classes = [0, 3, 10, 12] }"))
    result = subprocess.run([sys.executable, "-m", "kdlab", "validate", str(recipe)], capture_output=True, text=True)
    line = next(n for n, text in enumerate(recipe.read_text().splitlines(), 1) if "classes =" in text)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (f"{recipe}:{line}: classes 10, 12 not in the data set (it has 10 classes, 0 to 9) "
            "@ $.stages.teacher.methods.supervised.classes") in result.stderr, result.stderr
    with pytest.raises(RecipeError, match="classes 10, 12 not in the data set"):
        run(recipe, out=tmp_path, run_id="r", catalogue=catalogue)
    assert not (tmp_path / "tiny/r/models/teacher.pt").exists()
    within = write_recipe(TINY.replace("methods.supervised = {}", "methods.supervised = { classes = [0, 9] }"))
    assert subprocess.run([sys.executable, "-m", "kdlab", "validate", str(within)], capture_output=True).returncode == 0


# Recipe mistakes that used to pass `kdlab validate` and fail only after earlier stages had
# trained: each is now found by validate (and by run, before anything is written), at the line
# of the key it names. (edit to TINY's student stage, expected message, key path, text of the line)
_KD = "methods.logit_kd = { temperature = 4.0, alpha = 0.5 }"
_NO_TEACHERS = ('teachers = ["teacher"]\n', "")
MISTAKES = {
    "a method without its teacher": (
        [_NO_TEACHERS], "stages.student.methods.logit_kd needs 1 teacher, the stage lists 0",
        "stages.student.methods.logit_kd", _KD),
    "empty teachers": (
        [('teachers = ["teacher"]', "teachers = []")], "needs 1 teacher, the stage lists 0",
        "stages.student.methods.logit_kd", _KD),
    "a stage with no method": (
        [(_KD, "")], "stage student: no method returns a loss term (methods: none)", "stages.student",
        "[stages.student]"),
    "a stage with only a method that adds no term": (
        [(_KD, "methods.grad_clip = { max_norm = 1.0 }")], "no method returns a loss term (methods: grad_clip)",
        "stages.student", "[stages.student]"),
    "two methods returning ce": (
        [(_KD, _KD + "\nmethods.supervised = {}")],
        "methods logit_kd and supervised both return the loss term 'ce'", "stages.student.methods.supervised",
        "methods.supervised = {}"),
    "loss_weights naming no term": (
        [(_KD, "loss_weights = { hint = 2.0 }\n" + _KD)],
        "stages.student.loss_weights names 'hint', but the methods return only: ce, kd",
        "stages.student.loss_weights.hint", "loss_weights = { hint = 2.0 }"),
    "pruning that starts after the last epoch": (
        [(_KD, _KD + "\nmethods.pruning = { sparsity = 0.5, start_epoch = 2 }")],
        "pruning.start_epoch: 2 must be below the stage's epochs (2)", "stages.student.methods.pruning.start_epoch",
        "methods.pruning"),
    "pruning that ends after the last epoch": (
        [(_KD, _KD + '\nmethods.pruning = { sparsity = 0.5, schedule = "gradual", end_epoch = 5 }')],
        "pruning.end_epoch: 5 must be in [start_epoch, epochs) = [0, 2)", "stages.student.methods.pruning.end_epoch",
        "methods.pruning"),
    "cache views without augmentation": (
        [(_KD, _KD + "\nmethods.teacher_cache = { views = 4 }")],
        "teacher_cache.views: the training data is not augmented", "stages.student.methods.teacher_cache.views",
        "methods.teacher_cache"),
    "a cache of augmented data without views": (
        [(_KD, _KD + "\nmethods.teacher_cache = {}"), ('batch_size = 64', "batch_size = 64\naugment = true")],
        "the training data is augmented (data.augment = true)", "stages.student.methods.teacher_cache.views",
        "methods.teacher_cache"),
    "a cache without a teacher": (
        [_NO_TEACHERS, (_KD, "methods.supervised = {}\nmethods.teacher_cache = {}")],
        "methods.teacher_cache needs 1 teacher, the stage lists 0", "stages.student.methods.teacher_cache",
        "methods.teacher_cache"),
    "a missing student tap alias": (
        [(_KD, 'taps = { teacher = { feat = "blocks.1" } }\nmethods.feature_kd = {}\nmethods.supervised = {}')],
        "stages.student.methods.feature_kd.student: no tap 'feat' in stages.student.taps.student (taps: none)",
        "stages.student.methods.feature_kd.student", "methods.feature_kd"),
    "a missing teacher tap alias": (
        [(_KD, 'taps = { student = { feat = "blocks.1" } }\nmethods.feature_kd = {}\nmethods.supervised = {}')],
        "stages.student.methods.feature_kd.teacher: no tap 'feat' in stages.student.taps.teacher (taps: none)",
        "stages.student.methods.feature_kd.teacher", "methods.feature_kd"),
    "a teacher index past the teachers": (
        [(_KD, 'taps = { student = { feat = "blocks.1" }, teacher = { feat = "blocks.1" } }\n'
               "methods.feature_kd = { teacher_index = 1 }\nmethods.supervised = {}")],
        "feature_kd.teacher_index: 1, but the stage has 1 teacher(s)",
        "stages.student.methods.feature_kd.teacher_index", "methods.feature_kd"),
    "a triplet teacher index out of range": (
        [('teachers = ["teacher"]', 'teachers = ["teacher", "teacher"]'),
         (_KD, 'taps = { student = { emb = "embed" }, teacher = { emb = "embed" } }\n'
               "methods.triplet_ae = { teachers = [0, 2] }\nmethods.supervised = {}")],
        "triplet_ae.teachers: index 2, but the stage has 2 teacher(s)", "stages.student.methods.triplet_ae.teachers",
        "methods.triplet_ae"),
    "a multi-teacher method with one teacher": (
        [(_KD, 'taps = { student = { emb = "embed" }, teacher = { emb = "embed" } }\n'
               "methods.triplet_ae = {}\nmethods.supervised = {}")],
        "stages.student.methods.triplet_ae needs 2 teachers, the stage lists 1", "stages.student.teachers",
        'teachers = ["teacher"]'),
    "a multi-teacher method told to use one": (
        [('teachers = ["teacher"]', 'teachers = ["teacher", "teacher"]'),
         (_KD, 'taps = { student = { emb = "embed" }, teacher = { emb = "embed" } }\n'
               "methods.triplet_ae = { teachers = [1] }\nmethods.supervised = {}")],
        "triplet_ae.teachers: 1 teacher index, it needs at least two", "stages.student.methods.triplet_ae.teachers",
        "methods.triplet_ae"),
    "init from a stage of other widths": (
        [_NO_TEACHERS, (_KD, 'init = "teacher"\nmethods.supervised = {}')],
        "stages.student.init = 'teacher': its weights do not fit this stage's model (11 tensors differ in shape, "
        "e.g. blocks.0.0.weight: (8, 1, 3, 3) vs (4, 1, 3, 3))", "stages.student.init", 'init = "teacher"'),
    "init from a stage of another architecture": (
        [_NO_TEACHERS, (_KD, 'init = "teacher"\nmodel = { arch = "vit" }\nmethods.supervised = {}')],
        "stages.student.init = 'teacher': a cnn model, but this stage trains a vit", "stages.student.init",
        'init = "teacher"'),
}


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
def test_validate_finds_a_mistake_that_would_fail_only_after_training(mistake, write_recipe, tmp_path, capsys,
                                                                       catalogue):
    from kdlab.cli import main

    edits, message, key, line_text = MISTAKES[mistake]
    text = TINY
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    recipe = write_recipe(text)
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    lines = recipe.read_text().splitlines()
    student = lines.index("[stages.student]")  # the line is the student stage's
    line = next(n for n, t in enumerate(lines, 1) if n > student and t.startswith(line_text))
    assert f"{recipe}:{line}: " in err and message in err and f"@ $.{key}\n" in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    # run finds the same before any stage trains
    with pytest.raises(RecipeError, match=re.escape(message)):
        run(recipe, out=tmp_path / "runs", catalogue=catalogue)
    assert not list(tmp_path.rglob("models/*.pt"))


class _BrokenRequires:
    @staticmethod
    def requires(config, stage):
        return {"teachers": 1}  # a dict, not kdlab.Requirements

    @hookimpl
    def kdlab_loss_terms(self, student_out):
        return {"x": student_out.logits.sum()}


def test_a_plugins_faulty_requires_is_one_line_naming_the_plugin(write_recipe, tmp_path):
    from kdlab.engine.errors import KdlabError
    from kdlab.engine.registry import discover

    recipe = write_recipe(TINY.replace(_KD, "methods.broken = {}"))
    with pytest.raises(KdlabError, match=r"plugin 'broken' \(.*\): requires\(\) must return kdlab.Requirements, got dict"):
        run(recipe, out=tmp_path, catalogue=discover(extra={"broken": _BrokenRequires}))


def test_a_teacher_file_another_run_will_export_is_a_note_and_must_exist_when_its_stage_starts(write_recipe,
                                                                                              tmp_path):
    exported = tmp_path / "runs" / "tiny" / "main" / "models" / "teacher.pt"
    text = TINY.replace('teachers = ["teacher"]', f'teachers = ["{exported}"]')
    recipe = write_recipe(text, name="student.toml")
    kdlab = [sys.executable, "-m", "kdlab"]
    checked = subprocess.run([*kdlab, "validate", str(recipe)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert (f"# note: stages.student.teachers[0] = '{exported}' does not exist yet; it must exist when stage "
            "student starts") in checked.stdout
    # run now: the stage before it trains, then the student stops with one line
    early = subprocess.run([*kdlab, "run", str(recipe), "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert early.returncode == 2 and "Traceback" not in early.stderr
    assert (f"stages.student: model file '{exported}' does not exist; it must exist when this stage starts"
            in early.stderr)
    # the recipe that exports it runs first: then the same command trains the student from it
    subprocess.run([*kdlab, "run", str(write_recipe()), "--out", str(tmp_path / "runs"), "--run-id", "main"],
                   capture_output=True, text=True, check=True)
    assert exported.is_file()
    done = subprocess.run([*kdlab, "run", str(recipe), "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # a missing file elsewhere is still a mistake found by validate
    typo = subprocess.run([*kdlab, "validate", str(write_recipe(text.replace("models/teacher.pt", "teacher.pth"),
                                                                 name="typo.toml"))], capture_output=True, text=True)
    assert typo.returncode == 2 and "is neither an earlier stage" in typo.stderr
