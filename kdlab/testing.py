"""Checks a method plugin's own test suite can call: does the method train, add a loss term
that matters, compose with logit KD, and resume exactly after every kind of stop? ::

    from kdlab.testing import check_method

    def test_my_method(tmp_path):
        check_method("my_method", {"weight": 0.5}, plugin=MyMethod, workdir=tmp_path)

``check_method`` runs small recipes on the bundled digits data (two optimizer steps per epoch,
three epochs) on the CPU and raises ``AssertionError`` with what went wrong. It checks that

1. a stage with the method alone and a teacher trains: finite loss, the student's weights move;
   at its first step the method's own loss terms are present, finite and non-zero, and they
   change the student's gradient (a term that reaches only the method's own modules, or
   nothing, is caught);
2. the method composes with ``logit_kd`` in one stage (no clashing term names, the same terms
   of its own, still finite);
3. a run stopped and resumed ends bit-for-bit where an uninterrupted run ends, for each way a
   run stops: Ctrl-C after every epoch but the last, SIGINT and SIGTERM in the middle of an
   epoch (SIGTERM handled as ``kdlab run`` handles it), and a crash in the middle of an epoch
   that saves nothing (what SIGKILL leaves: the checkpoint of the last finished epoch). The
   method's state (extra modules, ``kdlab_state_dict``) must round-trip.

A method that adds no loss term (pruning, a precision or speed switch) passes ``terms=False``:
it is then checked beside ``supervised`` and must add no term. Pass ``plugin`` to test a class
before it is installed (it is registered under ``name``); without it, the installed entry point
``name`` is used.
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
import torch

from kdlab.engine.hookspecs import hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from kdlab.engine.types import DeferredTerm

__all__ = ["check_method"]

EPOCHS = 3  # the student's; two steps each
MID_STEP = 3  # the second step of the second epoch: where the signals and the crash strike


class _Stop:
    """Stops the student stage the way ``how`` says: ``epoch<N>`` (Ctrl-C at the end of epoch
    N, after its checkpoint), ``sigint`` / ``sigterm`` (the signal sent to this process in the
    middle of an epoch) or ``crash`` (an exception there, after which nothing is saved)."""

    default_enabled = True
    how = ""

    @hookimpl(trylast=True)
    def kdlab_epoch_end(self, stage, epoch):
        if stage.name == "student" and _Stop.how == f"epoch{epoch}":
            raise KeyboardInterrupt

    @hookimpl
    def kdlab_step_end(self, stage):
        if stage.name != "student" or stage.step != MID_STEP:
            return
        if _Stop.how == "crash":
            raise _Crash("check_method: a simulated crash")
        if _Stop.how in ("sigint", "sigterm"):
            os.kill(os.getpid(), signal.SIGINT if _Stop.how == "sigint" else signal.SIGTERM)


class _Crash(Exception):
    pass


def _sigterm_as_kdlab_run_handles_it(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # as kdlab.cli does: the loop saves, the run stops


class _TermProbe:
    """At the student stage's first step: every loss term's value, and whether the terms not in
    ``base`` (the method's own) change the student's gradient. A wrapper around the hook, so it
    sees the terms of every method as the loop collects them."""

    default_enabled = True
    base: frozenset = frozenset()
    seen: dict | None = None

    @hookimpl(wrapper=True)
    def kdlab_loss_terms(self, stage):
        results = yield
        if stage.name == "student" and stage.step == 0 and _TermProbe.seen is None:
            terms = {k: v for r in results for k, v in r.items()}
            # a deferred term (a vocabulary loss) is evaluated here on its own, as the loop would
            terms = {k: type(v).evaluate([v], [1.0])[0] if isinstance(v, DeferredTerm) else v for k, v in terms.items()}
            own = {k: v for k, v in terms.items() if k not in _TermProbe.base}
            params = [p for p in stage.student.parameters() if p.requires_grad]
            live = [v for v in own.values() if v.requires_grad]
            moves = False
            if live and params:
                grads = torch.autograd.grad(sum(live), params, retain_graph=True, allow_unused=True)
                moves = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
            _TermProbe.seen = {"values": {k: float(v.detach()) for k, v in own.items()}, "changes_gradient": moves}
        return results


class _Recorder:
    """Records the student stage's losses and terms at every step, and whether its weights moved."""

    default_enabled = True
    steps: list[tuple[float, tuple[str, ...]]] = []
    moved: bool | None = None

    def __init__(self):
        self.start: dict[str, torch.Tensor] = {}

    @hookimpl
    def kdlab_stage_start(self, stage):
        if stage.name == "student":
            _Recorder.steps, _Recorder.moved = [], None
            self.start = {k: t.detach().clone() for k, t in stage.student.state_dict().items()}

    @hookimpl
    def kdlab_step_end(self, stage, loss, terms):
        if stage.name == "student":
            _Recorder.steps.append((float(loss), tuple(sorted(terms))))

    @hookimpl
    def kdlab_stage_end(self, stage):
        if stage.name == "student":
            now = stage.student.state_dict()
            _Recorder.moved = any(not torch.equal(t, now[k]) for k, t in self.start.items()
                                  if t.is_floating_point() and k in now)  # pruning renames weights while it runs


def _recipe(name: str, config: dict, taps: dict | None, with_logit_kd: bool, terms: bool = True,
            teachers: int = 1) -> dict:
    student = {"teachers": ["teacher"] * teachers, "methods": {name: config}}
    if with_logit_kd:
        student["methods"]["logit_kd"] = {"temperature": 4.0, "alpha": 0.5}
    elif not terms:
        student["methods"]["supervised"] = {}
    if taps:
        student["taps"] = taps
    return {
        "name": "check",
        "seed": 0,
        # KDLAB_TEST_DEVICE=cuda runs the checks on a GPU
        "device": os.environ.get("KDLAB_TEST_DEVICE", "cpu"),
        "data": {"dataset": "digits", "batch_size": 539},  # 1,078 training digits: two steps an epoch
        # a checkpoint at every epoch's end: what a crash leaves is the last finished epoch
        "plugins": {"progress": {"enabled": False}, "tensorboard": {"enabled": False}, "checkpoint": {"every": 1}},
        "defaults": {"epochs": EPOCHS, "optimizer": {"name": "adam", "lr": 0.01},
                     "model": {"arch": "cnn", "channels": [4, 8]}},
        "stages": {"teacher": {"epochs": 1, "model": {"arch": "cnn", "channels": [8, 16]},
                               "methods": {"supervised": {}}},
                   "student": student},
    }


def check_method(name: str, config: dict[str, Any] | None = None, *, plugin: object | None = None,
                 taps: dict[str, dict[str, str]] | None = None, workdir: str | Path | None = None,
                 terms: bool = True, teachers: int = 1) -> None:
    """Run the checks above for method ``name`` with its recipe table ``config``; ``taps`` is
    the stage's ``taps`` table if the method reads features; ``terms=False`` for a method that
    adds no loss term; ``teachers``: how many teachers the student lists (the same one again,
    for a multi-teacher method)."""
    config = dict(config or {})
    extra = {name: plugin} if plugin is not None else {}
    checking = discover(extra={**extra, "_check_probe": _TermProbe, "_check_recorder": _Recorder})
    assert name in checking.plugins, checking.broken.get(name, f"no plugin named '{name}' is installed")
    assert not checking.plugins[name].default_enabled, f"'{name}' is on by default; check_method tests methods"
    stopping = discover(extra={**extra, "_check_stop": _Stop})  # inert until _Stop.how is set
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU kernels are bit-reproducible at a fixed thread count
    try:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            tmp = Path(tmp)
            own = None
            for composed in (False, True):
                what = "with logit_kd" if composed else "alone"
                path = tmp / f"{'composed' if composed else 'alone'}.toml"
                path.write_text(tomli_w.dumps(_recipe(name, config, taps, composed, terms, teachers)))
                _Recorder.steps, _TermProbe.seen = [], None
                _TermProbe.base = frozenset({"kd", "ce"} if composed else {"ce"} if not terms else ())
                result = run(path, out=tmp / "runs", run_id=what.replace(" ", "_"), catalogue=checking)
                own = _check_terms(name, what, terms, own)
                _check_trained(result.run_dir, name, what, composed)
            straight = torch.load(tmp / "runs/check/with_logit_kd/checkpoints/student/last.pt", weights_only=True)
            # the round trips: the composed recipe, stopped in each way, then resumed
            for how in [*(f"epoch{e}" for e in range(EPOCHS - 1)), "sigint", "sigterm", "crash"]:
                _resume_matches(name, how, path, tmp, stopping, straight)
    finally:
        torch.set_num_threads(threads)


def _resume_matches(name, how, path, tmp, stopping, straight) -> None:
    said = {"epoch0": "stopped (Ctrl-C) after epoch 1", "sigint": "stopped by SIGINT in epoch 2",
            "sigterm": "stopped by SIGTERM in epoch 2", "crash": "crashed in epoch 2 (nothing saved)"}
    said.update({f"epoch{e}": f"stopped (Ctrl-C) after epoch {e + 1}" for e in range(1, EPOCHS)})
    previous = signal.signal(signal.SIGTERM, _sigterm_as_kdlab_run_handles_it)
    _Stop.how = how
    try:
        run(path, out=tmp / "runs", run_id=how, catalogue=stopping)
    except (KeyboardInterrupt, _Crash):
        pass
    else:
        raise AssertionError(f"check_method: the run was not {said[how]}")
    finally:
        _Stop.how = ""
        signal.signal(signal.SIGTERM, previous)
    resumed = run(path, out=tmp / "runs", run_id=how, catalogue=stopping)
    again = torch.load(resumed.run_dir / "checkpoints/student/last.pt", weights_only=True)
    for part in ("student", "extra"):
        for key, tensor in straight[part].items():
            assert torch.equal(tensor, again[part][key]), (
                f"method '{name}': a run {said[how]} and resumed ends with {part} tensor '{key}' different "
                "from an uninterrupted run; save the method's state in kdlab_state_dict and restore "
                "it in kdlab_load_state_dict, and draw randomness from torch's generator")
    assert _equal(straight["plugins"].get(name), again["plugins"].get(name)), (
        f"method '{name}': its kdlab_state_dict differs after a run {said[how]} is resumed")


def _check_terms(name: str, what: str, terms: bool, before: list[str] | None) -> list[str]:
    seen = _TermProbe.seen
    assert seen is not None, f"method '{name}' ({what}): no loss terms were collected at the first step"
    values = seen["values"]
    if not terms:
        assert not values, f"method '{name}' ({what}): checked with terms=False, but it adds the terms {sorted(values)}"
        return []
    assert values, f"method '{name}' ({what}): it adds no loss term of its own"
    bad = {k: v for k, v in values.items() if not math.isfinite(v) or v == 0}
    assert not bad, f"method '{name}' ({what}): its loss terms are zero or not finite at the first step: {bad}"
    assert seen["changes_gradient"], (
        f"method '{name}' ({what}): its loss terms {sorted(values)} do not change the student's gradient "
        "(detached from the student, or reaching only the method's own modules)")
    if before is not None:
        assert sorted(values) == before, (
            f"method '{name}' ({what}): its terms are {sorted(values)}, alone they were {before}")
    return sorted(values)


def _check_trained(run_dir: Path, name: str, what: str, composed: bool) -> None:
    steps = _Recorder.steps
    assert len(steps) == 2 * EPOCHS, f"method '{name}' ({what}): expected {2 * EPOCHS} optimizer steps, saw {len(steps)}"
    losses = [loss for loss, _ in steps]
    assert all(math.isfinite(x) for x in losses), f"method '{name}' ({what}): the loss is not finite: {losses}"
    terms = set(steps[0][1])
    if composed:
        assert "kd" in terms, (
            f"method '{name}' ({what}): logit_kd's terms are missing from the loss: {sorted(terms)}")
    assert _Recorder.moved, f"method '{name}' ({what}): the student's weights did not change in {2 * EPOCHS} steps"
    assert (run_dir / "models" / "student.pt").is_file(), f"method '{name}' ({what}): no exported student"


def _equal(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b
