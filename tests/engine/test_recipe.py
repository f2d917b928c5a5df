"""Recipe validation: every problem reported with file, line and key path; overrides; defaults."""

from __future__ import annotations

import pytest
import tomli_w

from kdlab.cli import main
from kdlab.engine.errors import RecipeError
from kdlab.engine.recipe import load_recipe, parse_override, recipe_to_dict, structure_recipe
from tests.conftest import TINY

# (change to the tiny recipe, expected fragment of the message, expected key path)
MALFORMED = [
    ("temperature = 4.0", "temperature = -1.0", "temperature must be > 0, got -1.0",
     "$.stages.student.methods.logit_kd.temperature"),
    ("alpha = 0.5", "alpha = 1.5", "alpha must be <= 1, got 1.5", "$.stages.student.methods.logit_kd.alpha"),
    ("epochs = 2", "epochs = -1", "epochs must be >= 0, got -1", "$.stages.teacher.epochs"),
    ("lr = 0.01", "lr = -0.1", "lr must be > 0, got -0.1", "$.stages.teacher.optimizer.lr"),
    ("lr = 0.01", 'lr = "fast"', "lr must be a number, got 'fast'", "$.stages.teacher.optimizer.lr"),
    ('name = "adam"', 'name = "adagrad"', "name must be one of 'sgd', 'adam', 'adamw'",
     "$.stages.teacher.optimizer.name"),
    ("methods.supervised = {}", "methods.supervisd = {}", "unknown method 'supervisd' (methods: ab, amp,",
     "$.stages.teacher.methods.supervisd"),
    ('dataset = "digits"', 'dataset = "imagenet"', "unknown data set 'imagenet' (available: cifar10, cifar100, digits, mnist, phonemes, speech_commands, text)",
     "$.data.dataset"),
    ('channels = [8, 16]', 'channels = [8, 0]', "channels: must be a non-empty list of positive integers",
     "$.stages.teacher.model.channels"),
    ('arch = "cnn", channels = [8, 16]', 'arch = "vgg"', "unknown model 'vgg'", "$.stages.teacher.model.arch"),
    ("batch_size = 64", "batch_size = 64\nbatchsize = 3", "unknown key 'batchsize' (allowed: augment, batch_size,", "$.data.batchsize"),
    ('teachers = ["teacher"]', 'teachers = ["teachr"]', "'teachr' is neither an earlier stage (teacher) nor an existing model file",
     "$.stages.student.teachers[0]"),
    ("enabled = false", "enabled = 0", "enabled must be true or false, got 0", "$.plugins.progress.enabled"),
    ("temperature = 4.0", 'temperature = 4.0, enabled = "no"', "enabled must be true or false, got 'no'",
     "$.stages.student.methods.logit_kd.enabled"),
    ("temperature = 4.0", "temperature = 4.0, enabled = 0", "enabled must be true or false, got 0",
     "$.stages.student.methods.logit_kd.enabled"),
    ("seed = 0", "seed = -3", "seed must be >= 0, got -3", "$.seed"),
    # seeds and batch sizes the libraries cannot take passed validate and ended in a traceback
    ("seed = 0", "seed = 4294967296", "seed must be <= 4294967295, got 4294967296", "$.seed"),
    ("batch_size = 64", "batch_size = 9223372036854775807", "batch_size must be <= 2147483647", "$.data.batch_size"),
    ("methods.supervised = {}", "methods.supervised = 3", "must be a table (or true), got 3",
     "$.stages.teacher.methods.supervised"),
    ("[plugins.progress]", "[plugins.forward]\nenabled = false\n[plugins.progress]",
     "stage 'teacher': no enabled plugin computes the student's outputs", "$.plugins.forward.enabled"),
    ('device = "cpu"', 'device = "tpu"', "device must be one of 'auto', 'cpu', 'cuda'", "$.device"),
    ("[plugins.progress]", "[plugins.logit_kd]", "unknown default plugin 'logit_kd' (it is a method", "$.plugins.logit_kd"),
]


@pytest.mark.parametrize(("old", "new", "message", "path"), MALFORMED, ids=[m[3] for m in MALFORMED])
def test_malformed_recipe_gives_message_and_exit_2(write_recipe, capsys, old, new, message, path):
    assert old in TINY
    recipe = write_recipe(TINY.replace(old, new, 1))
    code = main(["validate", str(recipe)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert f"@ {path}" in err
    assert "Traceback" not in err
    assert err.startswith(f"kdlab: error: {recipe}:")


def test_a_misspelt_default_arch_that_every_stage_overrides_is_an_error(write_recipe, capsys):
    text = TINY.replace('model = { arch = "cnn", channels = [4, 8] }', 'model = { arch = "cnnn", channels = [4, 8] }')
    text = text.replace("[stages.student]", '[stages.student]\nmodel = { arch = "cnn", channels = [4, 8] }')
    assert main(["validate", str(write_recipe(text))]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'cnnn'" in err and "@ $.defaults.model.arch" in err and err.count("cnnn") == 1


def test_error_names_the_line(write_recipe, catalogue):
    recipe = write_recipe(TINY.replace("temperature = 4.0", "temperature = 0.0"))
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, catalogue)
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if "temperature = 0.0" in text)
    assert info.value.messages[0].startswith(f"{recipe}:{line}: ")


def test_all_errors_are_reported_together(write_recipe, catalogue):
    text = TINY.replace("epochs = 2", "epochs = -1").replace("temperature = 4.0", "temperature = -2.0")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(text), catalogue)
    joined = "\n".join(info.value.messages)
    assert "epochs must be >= 0" in joined and "temperature must be > 0" in joined
    assert "$.stages.teacher.epochs" in joined and "$.stages.student.epochs" in joined


@pytest.mark.parametrize("text, wanted", [
    # a misspelt method given as a dotted key: the line of the dotted key, not the table's header
    (TINY.replace("methods.logit_kd = { temperature = 4.0, alpha = 0.5 }",
                  "methods.supervised = {}\nmethods.logit_kdd.temperature = 4.0"), "methods.logit_kdd.temperature"),
    # a key deep in a table of its own
    (TINY + "\n[stages.student.optimizer]\nname = 'adam'\nlrr = 0.1\n", "lrr = 0.1"),
])
def test_a_dotted_or_deep_key_is_named_at_its_own_line(write_recipe, capsys, text, wanted):
    recipe = write_recipe(text)
    assert main(["validate", str(recipe)]) == 2
    line = next(n for n, t in enumerate(text.splitlines(), 1) if t.startswith(wanted))
    assert capsys.readouterr().err.startswith(f"kdlab: error: {recipe}:{line}: ")


def test_invalid_toml_reports_line(write_recipe, capsys):
    recipe = write_recipe("name = 'x'\n[data\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:2: not valid TOML" in err


@pytest.mark.parametrize("depth, message", [(3000, "nested too deep"), (40, "nested more than 32 deep")])
@pytest.mark.parametrize("command", ["validate", "sweep", "search"])
def test_deeply_nested_toml_is_one_line(write_recipe, capsys, depth, message, command):
    """3,000 nested arrays overflow the TOML parser's recursion; 40 parse but no recipe needs them."""
    recipe = write_recipe(TINY + "\n[extra]\nv = " + "[" * depth + "]" * depth + "\n")
    assert main([command, str(recipe), "--out", str(recipe.parent)] if command != "validate"
                else [command, str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err == f"kdlab: error: {recipe}: " + (
        "not valid TOML: arrays or tables nested too deep\n" if depth == 3000
        else "arrays or tables nested more than 32 deep; a recipe needs a few\n")
    assert message in err


def test_missing_recipe_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read recipe" in capsys.readouterr().err


def test_debug_shows_traceback(write_recipe):
    recipe = write_recipe(TINY.replace("epochs = 2", "epochs = -1"))
    with pytest.raises(RecipeError):
        main(["--debug", "validate", str(recipe)])


def test_defaults_are_merged_and_stage_wins(write_recipe, catalogue):
    recipe = load_recipe(write_recipe(), catalogue)
    assert recipe.stages["teacher"].epochs == 2
    assert recipe.stages["teacher"].model.config.channels == (8, 16)  # stage's own
    assert recipe.stages["student"].model.config.channels == (4, 8)  # from defaults
    assert recipe.stages["student"].optimizer.lr == 0.01


def test_set_overrides_are_validated(write_recipe, catalogue):
    path = write_recipe()
    recipe = load_recipe(path, catalogue, ["stages.student.methods.logit_kd.temperature=2", "seed=5"])
    assert recipe.stages["student"].methods["logit_kd"].temperature == 2.0
    assert recipe.seed == 5
    with pytest.raises(RecipeError) as info:
        load_recipe(path, catalogue, ["stages.student.epochs=-1"])
    assert info.value.messages == [f"{path}: epochs must be >= 0, got -1 @ $.stages.student.epochs (from --set)"]


def test_parse_override_values():
    assert parse_override("a.b=3") == (("a", "b"), 3)
    assert parse_override("a=[1, 2]") == (("a",), [1, 2])
    assert parse_override("data.root=/data/cifar") == (("data", "root"), "/data/cifar")
    assert parse_override("x=true") == (("x",), True)
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        parse_override("novalue")


def test_resolved_recipe_round_trips(write_recipe, catalogue):
    recipe = load_recipe(write_recipe(), catalogue)
    again = structure_recipe(__import__("tomllib").loads(tomli_w.dumps(recipe_to_dict(recipe))), catalogue)
    assert again == recipe


def test_method_can_be_switched_off_per_stage(write_recipe, catalogue):
    text = TINY.replace("[stages.teacher]", "[defaults.methods.grad_clip]\nmax_norm = 5.0\n\n[stages.teacher]")
    text += "\n[stages.student.methods.grad_clip]\nenabled = false\n"
    recipe = load_recipe(write_recipe(text), catalogue)
    assert recipe.stages["teacher"].methods["grad_clip"].max_norm == 5.0
    assert "grad_clip" not in recipe.stages["student"].methods


def test_later_stage_reference_is_an_error(write_recipe, catalogue):
    text = TINY.replace("[stages.teacher]", '[stages.teacher]\nteachers = ["student"]')
    with pytest.raises(RecipeError, match="neither an earlier stage"):
        load_recipe(write_recipe(text), catalogue)


def test_model_of_another_arch_replaces_the_default_model(write_recipe, catalogue):
    text = TINY.replace('model = { arch = "cnn", channels = [8, 16] }', 'model = { arch = "vit", dim = 32 }')
    recipe = load_recipe(write_recipe(text), catalogue)
    assert recipe.stages["teacher"].model.arch == "vit" and recipe.stages["teacher"].model.config.dim == 32
    assert recipe.stages["student"].model.config.channels == (4, 8)
