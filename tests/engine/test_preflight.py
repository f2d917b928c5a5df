"""Tap paths are checked against the built models (on the meta device) before anything trains."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kdlab.engine.errors import RecipeError
from kdlab.engine.runner import run
from tests.conftest import TINY

TAPPED = TINY.replace("methods.logit_kd = { temperature = 4.0, alpha = 0.5 }",
                      'taps = { student = { emb = "embed" }, teacher = { emb = "TEACHER_PATH" } }\n'
                      "methods.feature_kd = {}")


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
