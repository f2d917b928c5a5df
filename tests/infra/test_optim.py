from __future__ import annotations

import math

import pytest

from kdlab.engine.recipe import SchedulerConfig
from kdlab.infra.optim import lr_factor


def test_cosine_with_warmup():
    cfg = SchedulerConfig(name="cosine", warmup_epochs=2)
    assert lr_factor(cfg, 10, 0) == pytest.approx(1 / 3)
    assert lr_factor(cfg, 10, 1) == pytest.approx(2 / 3)
    assert lr_factor(cfg, 10, 2) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))


def test_multistep():
    cfg = SchedulerConfig(name="multistep", milestones=(3, 5), gamma=0.1)
    assert [lr_factor(cfg, 8, e) for e in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant():
    assert lr_factor(SchedulerConfig(), 5, 4) == 1.0


def test_a_per_step_schedule_warms_up_in_steps_and_decays_over_all_steps():
    cfg = SchedulerConfig(name="cosine", interval="step", warmup_steps=4)
    epochs, per = 3, 10  # 30 steps
    assert [lr_factor(cfg, epochs, t, per) for t in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(cfg, epochs, 4, per) == pytest.approx(1.0)
    assert lr_factor(cfg, epochs, 17, per) == pytest.approx(0.5 * (1 + math.cos(math.pi * 13 / 26)))
    steps = [lr_factor(cfg, epochs, t, per) for t in range(4, 30)]
    assert all(a > b for a, b in zip(steps, steps[1:]))  # smooth within and across epochs
    # milestones stay in epochs
    multi = SchedulerConfig(name="multistep", milestones=(1, 2), interval="step")
    assert [lr_factor(multi, epochs, t, per) for t in (9, 10, 19, 20)] == pytest.approx([1, 0.1, 0.1, 0.01])
    # per epoch, the steps argument changes nothing
    assert lr_factor(SchedulerConfig(name="cosine"), 10, 3, 17) == lr_factor(SchedulerConfig(name="cosine"), 10, 3)


def test_warmup_steps_without_a_per_step_schedule_is_an_error_naming_the_key(catalogue, write_recipe):
    from kdlab.engine.errors import RecipeError
    from kdlab.engine.recipe import load_recipe
    from tests.conftest import TINY

    text = TINY.replace('optimizer = { name = "adam", lr = 0.01 }',
                        'optimizer = { name = "adam", lr = 0.01 }\nscheduler = { name = "cosine", warmup_steps = 3 }')
    with pytest.raises(RecipeError, match=r"warmup_steps counts optimizer steps: set interval = \"step\" too"):
        load_recipe(write_recipe(text), catalogue)


def test_a_per_step_schedule_runs_history_records_the_rates_used_and_resume_is_exact(write_recipe, tmp_path):
    import json

    import torch

    from kdlab.engine.registry import discover
    from kdlab.engine.runner import run
    from tests.conftest import TINY, state_dicts_equal
    from tests.engine.test_runner import Crash

    text = TINY.replace("epochs = 2", "epochs = 3").replace(
        'optimizer = { name = "adam", lr = 0.01 }',
        'optimizer = { name = "adam", lr = 0.01 }\n'
        'scheduler = { name = "cosine", interval = "step", warmup_steps = 5 }') + "\n[plugins.checkpoint]\nevery = 1\n"
    recipe = write_recipe(text)
    cat = discover(extra={"crash": Crash})
    whole = run(recipe, out=tmp_path / "a", catalogue=cat)
    lines = [json.loads(x) for x in (whole.run_dir / "history" / "student.jsonl").read_text().splitlines()]
    per = 17  # 1078 training samples in batches of 64
    from kdlab.engine.recipe import SchedulerConfig
    from kdlab.infra.optim import lr_factor

    cfg = SchedulerConfig(name="cosine", interval="step", warmup_steps=5)
    for epoch, line in enumerate(lines):
        assert line["lr"] == pytest.approx(0.01 * lr_factor(cfg, 3, epoch * per, per))
        assert line["lr_last"] == pytest.approx(0.01 * lr_factor(cfg, 3, epoch * per + per - 1, per))
    assert lines[0]["lr"] == pytest.approx(0.01 / 6)  # the first step's rate, not the next epoch's
    Crash.armed = True
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(recipe, out=tmp_path / "b", catalogue=cat)
    Crash.armed = False
    crashed = next((tmp_path / "b" / "tiny").iterdir())
    resumed = run(recipe, out=tmp_path / "b", resume=crashed, catalogue=cat)
    for stage in ("teacher", "student"):
        a = torch.load(whole.run_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]
        b = torch.load(resumed.run_dir / "models" / f"{stage}.pt", weights_only=True)["state_dict"]
        assert state_dicts_equal(a, b), stage
