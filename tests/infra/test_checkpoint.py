"""The checkpoint plugin's pacing: last.pt by elapsed time (not every epoch), the last finished
epoch's state written on Ctrl-C / SIGTERM, and an exact resume from it."""

from __future__ import annotations

import pytest
import torch

from kdlab import hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from tests.conftest import TINY, state_dicts_equal

RECIPE = TINY.replace("epochs = 2", "epochs = 4").replace(
    'model = { arch = "cnn", channels = [4, 8] }', 'model = { arch = "cnn", channels = [4, 8], dropout = 0.3 }'
) + "\n[plugins.checkpoint]\nevery_s = 3600\n"


class Interrupt:
    """Ctrl-C in the middle of the student's third epoch; notes whether last.pt existed then."""

    default_enabled = True
    armed = False
    last_existed: bool | None = None

    @hookimpl
    def kdlab_step_end(self, stage):
        if Interrupt.armed and stage.name == "student" and stage.epoch == 2:
            Interrupt.armed = False
            Interrupt.last_existed = (stage.run_dir / "checkpoints/student/last.pt").is_file()
            raise KeyboardInterrupt


def test_interrupt_writes_the_last_finished_epoch_and_resume_is_exact(write_recipe, tmp_path):
    cat = discover(extra={"interrupt": Interrupt})
    recipe = write_recipe(RECIPE)
    reference = run(recipe, out=tmp_path / "a", catalogue=cat)
    # paced by time: in a run shorter than every_s, only each stage's last epoch is written
    assert torch.load(reference.run_dir / "checkpoints/student/last.pt", weights_only=True)["epoch"] == 4

    Interrupt.armed = True
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out=tmp_path / "b", catalogue=cat)
    assert Interrupt.last_existed is False  # nothing was written during the stage's epochs
    run_dir = next((tmp_path / "b" / "tiny").iterdir())
    state = torch.load(run_dir / "checkpoints/student/last.pt", weights_only=True)
    assert state["epoch"] == 2 and (run_dir / "checkpoints/student/best.pt").is_file()
    resumed = run(recipe, out=tmp_path / "b", resume=run_dir, catalogue=cat)
    for stage in ("teacher", "student"):
        a = torch.load(reference.run_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]
        b = torch.load(resumed.run_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]
        assert state_dicts_equal(a, b), stage


def test_every_zero_seconds_writes_each_epoch(write_recipe, tmp_path, catalogue):
    seen = []

    class Watch:
        default_enabled = True

        @hookimpl
        def kdlab_epoch_start(self, stage, epoch):
            path = stage.run_dir / "checkpoints" / stage.name / "last.pt"
            seen.append(torch.load(path, weights_only=True)["epoch"] if path.is_file() else None)

    run(write_recipe(RECIPE.replace("every_s = 3600", "every_s = 0")), out=tmp_path,
        catalogue=discover(extra={"watch": Watch}))
    assert seen == [None, 1, 2, 3] * 2


class InterruptAtEpochEnd:
    """Ctrl-C right after the student's epoch ``at`` ends (its state saved, the next not begun)."""

    default_enabled = True
    at: int | None = None

    @hookimpl(trylast=True)
    def kdlab_epoch_end(self, stage, epoch, metrics):
        if stage.name == "student" and InterruptAtEpochEnd.at == epoch:
            InterruptAtEpochEnd.at = None
            raise KeyboardInterrupt


def test_gradual_pruning_resumes_exactly_after_every_epoch(write_recipe, tmp_path):
    """Gradual pruning read stale magnitudes (the weight the last forward pass computed; after a
    resume, the freshly built model's): a run continued after epoch 2 or 3 pruned other weights
    and ended with other metrics."""
    cat = discover(extra={"interrupt": InterruptAtEpochEnd})
    recipe = write_recipe(RECIPE.replace(
        "methods.logit_kd = { temperature = 4.0, alpha = 0.5 }",
        'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }\n'
        'methods.pruning = { sparsity = 0.5, schedule = "gradual", start_epoch = 0, end_epoch = 3 }'))
    reference = run(recipe, out=tmp_path / "ref", catalogue=cat)
    want = torch.load(reference.run_dir / "models/student.pt", weights_only=True)["state_dict"]
    for at in (0, 1, 2):
        InterruptAtEpochEnd.at = at
        with pytest.raises(KeyboardInterrupt):
            run(recipe, out=tmp_path / f"k{at}", run_id="r", catalogue=cat)
        resumed = run(recipe, out=tmp_path / f"k{at}", run_id="r", catalogue=cat)
        got = torch.load(resumed.run_dir / "models/student.pt", weights_only=True)["state_dict"]
        assert state_dicts_equal(want, got), at
        assert resumed.metrics["student"] == {**reference.metrics["student"],
                                              "latency_ms": resumed.metrics["student"]["latency_ms"]}, at
