"""Plugin discovery: built-ins and a third-party package found through entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from kdlab import KdlabError, hookimpl
from kdlab.engine.registry import call_order, discover

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

    @hookimpl
    def kdlab_loss_terms(self, stage, student_out):
        return {"l2": logit_l2(student_out.logits, scale=stage.config_for(self).scale)}
'''


@pytest.fixture
def third_party(tmp_path):
    """Install a package the way pip would leave it: the module plus a .dist-info with entry points."""
    site = tmp_path / "site"
    (site / "kdlab_logit_l2").mkdir(parents=True)
    (site / "kdlab_logit_l2" / "__init__.py").write_text(THIRD_PARTY)
    info = site / "kdlab_logit_l2-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdlab-logit-l2\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdlab.plugins]\nlogit_l2 = kdlab_logit_l2:LogitL2\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


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


def test_misspelt_hook_is_an_error():
    with pytest.raises(KdlabError, match="plugin 'misspelt' implements an unknown hook"):
        discover(extra={"misspelt": Misspelt})


def test_call_order_lists_wrappers_first_and_trylast_defaults_last(catalogue):
    pm = catalogue.manager(["forward", "amp", "optim"])
    order = call_order(pm)
    assert order["kdlab_teacher_outputs"] == ["forward (wrapper)", "amp (wrapper)", "forward"]
    assert order["kdlab_backward"] == ["amp", "optim"]
