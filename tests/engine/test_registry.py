"""Plugin discovery: built-ins and a third-party package found through entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import attrs
import pytest

from kdlab import hookimpl
from kdlab.engine.registry import call_order, discover
from tests.conftest import installed_plugin

THIRD_PARTY = '''
"""A stranger's method plugin: penalise the squared norm of the student's logits."""
import attrs
from attrs import validators as v
from kdlab import hookimpl


@attrs.frozen(kw_only=True)
class LogitL2Config:
    scale: float = attrs.field(default=1.0, validator=v.gt(0))


def logit_l2(logits, *, scale):
    return scale * logits.pow(2).mean()


class LogitL2:
    @hookimpl
    def kdlab_config_class(self):
        return LogitL2Config

    def __init__(self, config):
        self.config = config

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out):
        return {"l2": logit_l2(student_out.logits, scale=self.config.scale)}
'''


@pytest.fixture
def third_party(tmp_path):
    """Install a package the way pip would leave it: the module plus a .dist-info with entry points."""
    return installed_plugin(tmp_path, "kdlab_logit_l2", THIRD_PARTY, "logit_l2 = kdlab_logit_l2:LogitL2")


def test_builtins_are_discovered_through_entry_points(catalogue):
    assert {"supervised", "logit_kd", "amp", "pruning", "grad_clip"} <= set(catalogue.methods)
    assert catalogue.plugins["logit_kd"].origin.startswith("kdlab.methods.logit_kd:LogitKD (kdlab ")
    assert catalogue.plugins["tensorboard"].default_enabled
    assert {"digits", "mnist", "cifar10", "cifar100"} <= set(catalogue.datasets)


def test_third_party_plugin_is_discovered_and_used(third_party, tmp_path, write_recipe):
    kdlab = [sys.executable, "-m", "kdlab"]
    listing = subprocess.run([*kdlab, "plugins"], env=third_party, capture_output=True, text=True, check=True)
    assert "logit_l2  (method" in listing.stdout and "kdlab-logit-l2 0.1" in listing.stdout
    assert "scale: float (default 1.0)" in listing.stdout
    recipe = write_recipe(textwrap.dedent("""
        name = "third"
        device = "cpu"
        [data]
        dataset = "digits"
        [plugins.progress]
        enabled = false
        [plugins.tensorboard]
        log_every = 1
        [stages.student]
        epochs = 1
        model = { arch = "cnn", channels = [4, 8] }
        methods.supervised = {}
        methods.logit_l2 = { scale = 0.01 }
    """))
    order = subprocess.run([*kdlab, "validate", str(recipe)], env=third_party, capture_output=True, text=True, check=True)
    assert "kdlab_loss_terms: supervised -> logit_l2" in order.stdout or "kdlab_loss_terms: logit_l2 -> supervised" in order.stdout
    done = subprocess.run([*kdlab, "run", str(recipe), "--out", str(tmp_path / "runs")], env=third_party,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((tmp_path / "runs" / "third").iterdir()) / "tb" / "student"))
    acc.Reload()
    assert "loss/l2" in acc.Tags()["scalars"]
    # without the package the same recipe names an unknown method
    bare = subprocess.run([*kdlab, "validate", str(recipe)], capture_output=True, text=True)
    assert bare.returncode == 2 and "unknown method 'logit_l2'" in bare.stderr


class Misspelt:
    @hookimpl
    def kdlab_loss_term(self, stage):  # missing the final "s"
        return {}


def test_misspelt_hook_is_reported_by_module_and_skipped():
    catalogue = discover(extra={"misspelt": Misspelt})
    assert "misspelt" not in catalogue.plugins and "logit_kd" in catalogue.plugins
    why = catalogue.broken["misspelt"]
    assert "tests.engine.test_registry:Misspelt" in why and "unknown hook 'kdlab_loss_term'" in why
    assert " object at 0x" not in why


class Undecorated:
    def kdlab_loss_terms(self, stage, batch, student_out):  # no @hookimpl: never called
        return {"x": student_out.logits.mean()}


def test_undecorated_hook_methods_are_reported():
    catalogue = discover(extra={"undecorated": Undecorated})
    assert "kdlab_loss_terms lacks the @hookimpl decorator" in catalogue.broken["undecorated"]


def test_a_recipe_that_uses_a_broken_plugin_gets_its_reason(write_recipe):
    from kdlab.engine.errors import RecipeError
    from kdlab.engine.recipe import load_recipe

    catalogue = discover(extra={"undecorated": Undecorated})
    load_recipe(write_recipe(), catalogue)  # a recipe that does not use it is unaffected
    text = open(write_recipe()).read() + "methods.undecorated = {}\n"
    with pytest.raises(RecipeError, match=r"recipe.toml:\d+: plugin 'undecorated' .* lacks the @hookimpl"):
        load_recipe(write_recipe(text), catalogue)


def test_a_plugin_that_fails_to_import_leaves_the_others_working(tmp_path):
    env = installed_plugin(tmp_path, "kdlab_broken", "raise ImportError('needs a missing library')\n",
                           "broken = kdlab_broken:Plugin")
    listed = subprocess.run([sys.executable, "-m", "kdlab", "plugins"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "logit_kd" in listed.stdout
    assert ("broken  (BROKEN, skipped)\n  plugin 'broken' (kdlab_broken:Plugin, kdlab-broken 0.1) failed to load: "
            "ImportError: needs a missing library") in listed.stdout


def test_call_order_lists_wrappers_first_and_trylast_defaults_last(catalogue):
    pm = catalogue.manager(["forward", "amp", "optim"])
    order = call_order(pm)
    assert order["kdlab_teacher_outputs"] == ["forward (wrapper)", "amp (wrapper)", "forward"]
    assert order["kdlab_backward"] == ["amp", "optim"]


# -- construction with config -----------------------------------------------------------------

@attrs.frozen(kw_only=True)
class L2Config:
    scale: float = 1.0


BUILT: list = []


class NewL2:
    """Written the current way: built per stage with its config and the stage's view."""

    config_class = L2Config

    def __init__(self, config, stage):
        self.config = config
        BUILT.append((config, stage))

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out):
        return {"l2": self.config.scale * student_out.logits.pow(2).mean()}


class OldL2:
    """Written for the previous release: built with no arguments, reads its table every step."""

    config_class = L2Config

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out):
        return {"l2": stage.config_for(self).scale * student_out.logits.pow(2).mean()}


L2_RECIPE = """
name = "l2"
device = "cpu"
[data]
dataset = "digits"
[plugins.progress]
enabled = false
[stages.a]
epochs = 1
model = { arch = "cnn", channels = [4, 8] }
methods.supervised = {}
methods.PLUGIN = { scale = 0.5 }
[stages.b]
epochs = 1
model = { arch = "cnn", channels = [4, 8] }
methods.supervised = {}
methods.PLUGIN = { scale = 0.25 }
"""


def _run_l2(plugin_name, plugin, tmp_path, write_recipe):
    import torch

    from kdlab.engine.runner import run

    recipe = write_recipe(L2_RECIPE.replace("PLUGIN", plugin_name), name=f"{plugin_name}.toml")
    result = run(recipe, out=tmp_path / plugin_name, catalogue=discover(extra={plugin_name: plugin}))
    return {s: torch.load(result.run_dir / "models" / f"{s}.pt", weights_only=True)["state_dict"] for s in "ab"}


def test_a_plugin_is_built_per_stage_with_its_config_and_the_stage_view(tmp_path, write_recipe):
    import warnings

    from kdlab.engine.registry import PluginDeprecationWarning

    BUILT.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = _run_l2("new_l2", NewL2, tmp_path, write_recipe)
    assert not [w for w in caught if issubclass(w.category, PluginDeprecationWarning)]
    # one instance per stage (validate-time checks build none), each with that stage's table and view
    assert [(c.scale, v.name, v.methods, v.epochs) for c, v in BUILT] == [
        (0.5, "a", ("supervised", "new_l2"), 1), (0.25, "b", ("supervised", "new_l2"), 1)]
    assert BUILT[0][1].data_kinds == {"image", "classification"}

    # the previous release's way still works, with the same result, and is warned by name
    with pytest.warns(PluginDeprecationWarning, match=r"plugin 'old_l2' \(tests.engine.test_registry:OldL2 .*"
                                                      r"stage.config_for\(self\), which is deprecated.*"
                                                      r"def __init__\(self, config\)"):
        old = _run_l2("old_l2", OldL2, tmp_path, write_recipe)
    from tests.conftest import state_dicts_equal

    assert all(state_dicts_equal(new[s], old[s]) for s in "ab")


class BadInit:
    config_class = L2Config

    def __init__(self, config):
        raise ValueError("scale out of range")

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out):
        return {}


def test_a_plugin_whose_constructor_fails_is_one_line_naming_it(tmp_path, write_recipe):
    from kdlab.engine.errors import KdlabError

    with pytest.raises(KdlabError, match=r"plugin 'bad' \(tests.engine.test_registry:BadInit .*\) failed to build: "
                                         r"ValueError: scale out of range"):
        _run_l2("bad", BadInit, tmp_path, write_recipe)


class OldDataHook:
    @hookimpl
    def kdlab_build_data(self, spec, seed):
        return None


def test_a_plugin_implementing_a_removed_hook_is_told_what_replaced_it():
    catalogue = discover(extra={"old_data": OldDataHook})
    assert "old_data" not in catalogue.plugins
    assert ("implements the hook 'kdlab_build_data', which was removed: give the data set's build function to its "
            "kdlab.datasets entry point") in catalogue.broken["old_data"]


def test_no_built_in_plugin_reads_its_config_the_deprecated_way():
    from pathlib import Path

    import kdlab

    root = Path(kdlab.__file__).parent
    users = [str(p.relative_to(root)) for room in ("methods", "metrics", "infra") for p in (root / room).rglob("*.py")
             if "config_for" in p.read_text(encoding="utf-8")]
    assert users == []
