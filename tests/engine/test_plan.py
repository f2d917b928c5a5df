"""What a recipe will run: each stage's plugins by data kind and process count, the view its
plugins are built with, and the errors for a plugin or method on data it does not work on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kdlab.engine.errors import RecipeError
from kdlab.engine.plan import stage_plugins, stage_view
from kdlab.engine.recipe import load_recipe
from tests.conftest import TINY

SPEECH_OR_TEXT = {"au_fa_fr", "per", "lm_metrics", "text"}

TEXT = """
name = "lm"
device = "cpu"
[data]
dataset = "text"
dir = "DIR"
[stages.student]
epochs = 1
model = { arch = "transformer_lm" }
methods.lm = {}
"""


def test_a_digits_stage_runs_no_speech_or_text_plugin(catalogue, write_recipe):
    recipe = load_recipe(write_recipe(), catalogue)
    alone = stage_plugins(recipe, catalogue, "student", world_size=1)
    assert not SPEECH_OR_TEXT & set(alone)
    assert {"accuracy", "optim", "forward", "checkpoint", "logit_kd"} <= set(alone)
    assert "distributed" not in alone  # it acts only across processes
    assert "distributed" in stage_plugins(recipe, catalogue, "student", world_size=2)
    assert stage_view(recipe, "student").data_kinds == {"image", "classification"}


def test_a_text_stage_runs_the_text_plugins_and_not_accuracy(catalogue, write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(TEXT.replace("DIR", str(tmp_path))), catalogue)
    plugins = set(stage_plugins(recipe, catalogue, "student", world_size=1))
    assert {"lm_metrics", "text", "lm"} <= plugins
    assert not {"accuracy", "au_fa_fr", "per"} & plugins


def test_validate_lists_only_what_runs_in_firing_order(write_recipe):
    out = subprocess.run([sys.executable, "-m", "kdlab", "validate", str(write_recipe())], capture_output=True,
                         text=True, check=True).stdout
    listing = out[out.index("# stage student: plugins"):]
    named = {n.strip(" ,()") for line in listing.splitlines() for n in line.split(":", 1)[-1].replace("->", ",").split(",")}
    assert "accuracy" in named and not SPEECH_OR_TEXT & named
    assert "[plugins.per]" not in out and "[plugins.lm_metrics]" not in out  # nor their settings
    assert "(and under --nproc N: distributed)" in listing
    hooks = [line.split(":")[0].strip("# ") for line in listing.splitlines()[1:] if line.startswith("#   ")]
    from kdlab.engine.hookspecs import FIRING_ORDER

    assert hooks == sorted(hooks, key=FIRING_ORDER.index)
    assert hooks.index("kdlab_stage_start") < hooks.index("kdlab_configure_optimizer") < hooks.index("kdlab_loss_terms")


def test_settings_for_a_plugin_that_does_not_apply_to_the_data_are_an_error(catalogue, write_recipe):
    text = TINY.replace("[plugins.progress]", "[plugins.per]\nbeam_size = 4\n\n[plugins.progress]")
    with pytest.raises(RecipeError, match=r"recipe.toml:\d+: plugin 'per' runs on ctc data; data set 'digits' is "
                                          r"classification, image, so it would do nothing here"):
        load_recipe(write_recipe(text), catalogue)
    # switching it off is allowed (a recipe shared between data sets may)
    load_recipe(write_recipe(TINY.replace("[plugins.progress]", "[plugins.per]\nenabled = false\n\n[plugins.progress]")),
                catalogue)


def test_a_text_method_on_image_data_fails_validate_naming_the_method(write_recipe):
    text = TINY.replace("methods.logit_kd = { temperature = 4.0, alpha = 0.5 }", "methods.token_kd = {}")
    recipe = write_recipe(text)
    done = subprocess.run([sys.executable, "-m", "kdlab", "validate", str(recipe)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = next(n for n, t in enumerate(recipe.read_text().splitlines(), 1) if "token_kd" in t)
    assert (f"recipe.toml:{line}: stages.student.methods.token_kd works on text data; data set 'digits' is "
            "classification, image @ $.stages.student.methods.token_kd") in done.stderr
