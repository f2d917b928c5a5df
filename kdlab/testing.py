"""Checks a method plugin's own test suite can call: does the method train, compose with logit
KD, and survive a checkpoint round trip? ::

    from kdlab.testing import check_method

    def test_my_method(tmp_path):
        check_method("my_method", {"weight": 0.5}, plugin=MyMethod, workdir=tmp_path)

``check_method`` runs small recipes on the bundled digits data (two optimizer steps per epoch)
on the CPU and raises ``AssertionError`` with what went wrong. It checks that

1. a stage with the method alone and a teacher trains: finite loss, the method's terms logged,
   the student's weights move;
2. the method composes with ``logit_kd`` in one stage (no clashing term names, still finite);
3. a run interrupted after its first epoch and resumed ends bit-for-bit where an uninterrupted
   run ends: the method's state (extra modules, ``kdlab_state_dict``) round-trips.

Pass ``plugin`` to test a class before it is installed (it is registered under ``name``);
without it, the installed entry point ``name`` is used.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
import torch

from kdlab.engine.hookspecs import hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run

__all__ = ["check_method"]


class _StopAfterFirstEpoch:
    """Interrupts the student stage at the end of its first epoch, after the checkpoint."""

    default_enabled = True

    @hookimpl(trylast=True)
    def kdlab_epoch_end(self, stage, epoch):
        if stage.name == "student" and epoch == 0:
            raise KeyboardInterrupt


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
            _Recorder.moved = any(not torch.equal(t, now[k]) for k, t in self.start.items() if t.is_floating_point())


def _recipe(name: str, config: dict, taps: dict | None, with_logit_kd: bool) -> dict:
    student = {"teachers": ["teacher"], "methods": {name: config}}
    if with_logit_kd:
        student["methods"]["logit_kd"] = {"temperature": 4.0, "alpha": 0.5}
    if taps:
        student["taps"] = taps
    return {
        "name": "check",
        "seed": 0,
        # KDLAB_TEST_DEVICE=cuda runs the checks on a GPU
        "device": os.environ.get("KDLAB_TEST_DEVICE", "cpu"),
        "data": {"dataset": "digits", "batch_size": 539},  # 1,078 training digits: two steps an epoch
        "plugins": {"progress": {"enabled": False}, "tensorboard": {"enabled": False}},
        "defaults": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01},
                     "model": {"arch": "cnn", "channels": [4, 8]}},
        "stages": {"teacher": {"epochs": 1, "model": {"arch": "cnn", "channels": [8, 16]},
                               "methods": {"supervised": {}}},
                   "student": student},
    }


def check_method(name: str, config: dict[str, Any] | None = None, *, plugin: object | None = None,
                 taps: dict[str, dict[str, str]] | None = None, workdir: str | Path | None = None) -> None:
    """Run the three checks above for method ``name`` with its recipe table ``config``; ``taps``
    is the stage's ``taps`` table if the method reads features."""
    config = dict(config or {})
    extra = {name: plugin} if plugin is not None else {}
    catalogue = discover(extra={**extra, "_check_recorder": _Recorder})
    assert name in catalogue.plugins, catalogue.broken.get(name, f"no plugin named '{name}' is installed")
    assert not catalogue.plugins[name].default_enabled, f"'{name}' is on by default; check_method tests methods"
    interrupting = discover(extra={**extra, "_check_stop": _StopAfterFirstEpoch})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU kernels are bit-reproducible at a fixed thread count
    try:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            tmp = Path(tmp)
            for composed in (False, True):
                what = "with logit_kd" if composed else "alone"
                path = tmp / f"{'composed' if composed else 'alone'}.toml"
                path.write_text(tomli_w.dumps(_recipe(name, config, taps, composed)))
                result = run(path, out=tmp / "runs", run_id=what.replace(" ", "_"), catalogue=catalogue)
                _check_trained(result.run_dir, name, what, composed)
            # the round trip: the composed recipe, interrupted after epoch 1, then resumed
            try:
                run(path, out=tmp / "runs", run_id="resumed", catalogue=interrupting)
            except KeyboardInterrupt:
                pass
            else:
                raise AssertionError("check_method: the interrupting plugin did not stop the run")
            resumed = run(path, out=tmp / "runs", run_id="resumed", catalogue=catalogue)
            straight = torch.load(tmp / "runs/check/with_logit_kd/checkpoints/student/last.pt", weights_only=True)
            again = torch.load(resumed.run_dir / "checkpoints/student/last.pt", weights_only=True)
            for part in ("student", "extra"):
                for key, tensor in straight[part].items():
                    assert torch.equal(tensor, again[part][key]), (
                        f"method '{name}': after an interrupted run is resumed, {part} tensor '{key}' differs "
                        "from an uninterrupted run; save the method's state in kdlab_state_dict and restore "
                        "it in kdlab_load_state_dict, and draw randomness from torch's generator")
            assert _equal(straight["plugins"].get(name), again["plugins"].get(name)), (
                f"method '{name}': its kdlab_state_dict differs after a resume")
    finally:
        torch.set_num_threads(threads)


def _check_trained(run_dir: Path, name: str, what: str, composed: bool) -> None:
    steps = _Recorder.steps
    assert len(steps) == 4, f"method '{name}' ({what}): expected 4 optimizer steps, saw {len(steps)}"
    losses = [loss for loss, _ in steps]
    assert all(math.isfinite(x) for x in losses), f"method '{name}' ({what}): the loss is not finite: {losses}"
    terms = set(steps[0][1])
    if composed:
        assert "kd" in terms, (
            f"method '{name}' ({what}): logit_kd's terms are missing from the loss: {sorted(terms)}")
    assert _Recorder.moved, f"method '{name}' ({what}): the student's weights did not change in 4 steps"
    assert (run_dir / "models" / "student.pt").is_file(), f"method '{name}' ({what}): no exported student"


def _equal(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b
