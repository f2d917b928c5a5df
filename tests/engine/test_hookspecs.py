"""Meta-tests keeping the plugin surface honest: every hook is documented and exercised."""

from __future__ import annotations

import functools
import inspect
import types
from pathlib import Path

import pytest

from kdlab import hookimpl
from kdlab.engine import hookspecs
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("kdlab_") and inspect.isfunction(f))


def test_there_are_hooks():
    assert len(SPECS) >= 20


@pytest.mark.parametrize("name", SPECS)
def test_hook_has_docstring_and_is_in_contributing(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc and "Fires" in doc, f"{name}: the docstring must say when it fires"
    assert f"`{name}`" in (ROOT / "CONTRIBUTING.md").read_text(), f"{name} is not documented in CONTRIBUTING.md"


def _spy():
    """A plugin implementing every hookspec that records each call and changes nothing."""
    calls: set[str] = set()

    def make(name):
        spec = getattr(hookspecs, name)

        @functools.wraps(spec)  # pluggy reads the argument names through __wrapped__
        def impl(*args):
            calls.add(name)
            return {} if name == "kdlab_state_dict" else None

        return hookimpl(impl)

    spy = types.SimpleNamespace(default_enabled=True, **{n: make(n) for n in SPECS})
    return spy, calls


class Adapter:
    @hookimpl
    def kdlab_extra_modules(self, probe):
        return {"adapter": __import__("torch").nn.Linear(2, 2)}


class Crash:
    default_enabled = True
    armed = True

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        if Crash.armed and stage.name == "student" and epoch == 1:
            Crash.armed = False
            raise KeyboardInterrupt  # as Ctrl-C: kdlab_interrupted fires, last.pt holds epoch 1


def test_every_hook_fires_in_a_run_with_resume(write_recipe, tmp_path):
    spy, calls = _spy()
    cat = discover(extra={"spy": spy, "adapter": Adapter, "crash": Crash})
    text = TINY.replace(
        'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }',
        'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }\nmethods.amp = {}\nmethods.adapter = {}\n'
        'methods.grad_clip = {}\nmethods.pruning = { sparsity = 0.3 }',
    )
    recipe = write_recipe(text)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path, catalogue=cat)
    run(recipe, out=tmp_path, resume=next((tmp_path / "tiny").iterdir()), catalogue=cat)
    assert set(SPECS) - calls == set()
