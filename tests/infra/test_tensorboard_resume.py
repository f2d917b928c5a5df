"""After a resume, TensorBoard holds each step once: events logged after the checkpoint by the
interrupted process are purged."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdlab import hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from tests.conftest import TINY


class CrashMidEpoch:
    default_enabled = True
    armed = True

    @hookimpl
    def kdlab_step_end(self, stage):
        # epoch 2 of 3 is half done: its steps were logged, but its checkpoint was never written
        if CrashMidEpoch.armed and stage.name == "student" and stage.step == 17 + 10:
            CrashMidEpoch.armed = False
            raise RuntimeError("crash")


def test_resume_logs_every_step_once(write_recipe, tmp_path):
    recipe = write_recipe(TINY.replace("epochs = 2", "epochs = 3") + "\n[plugins.tensorboard]\nlog_every = 1\n")
    cat = discover(extra={"crash": CrashMidEpoch})
    with pytest.raises(RuntimeError):
        run(recipe, out=tmp_path, catalogue=cat)
    run_dir = next((tmp_path / "tiny").iterdir())
    run(recipe, out=tmp_path, resume=run_dir, catalogue=cat)
    acc = EventAccumulator(str(run_dir / "tb" / "student"))
    acc.Reload()
    for tag in ("loss/total", "val/accuracy", "lr"):
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), f"{tag}: {steps}"
    assert len(acc.Scalars("loss/total")) == 3 * 17  # 1,078 training digits in batches of 64
