"""Sweep expansion, validation, skipping finished runs and continuing interrupted ones."""

from __future__ import annotations

import shlex

import pytest

from kdlab.cli import main
from kdlab.engine.errors import RecipeError
from kdlab.engine.recipe import parse_override
from kdlab.studies import sweep

SWEEP = """
name = "sw"
device = "cpu"
[data]
dataset = "digits"
batch_size = 600
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[stages.s]
epochs = 1
model = { arch = "cnn", channels = [4, 8] }
methods.supervised = {}
[sweep]
seeds = [0, 1]
grid."stages.s.model.channels" = [[4, 8], [8, 16]]
zip."stages.s.optimizer.lr" = [0.01, 0.003]
zip."stages.s.methods.supervised.label_smoothing" = [0.0, 0.1]
"""


def test_grid_times_zip_times_seeds():
    table = {"seeds": [0, 1, 2], "grid": {"a": [1, 2], "b": ["x", "y"]}, "zip": {"c": [0.1, 0.2], "d": [True, False]}}
    runs = sweep.expand(table)
    assert len(runs) == 2 * 2 * 2 * 3
    assert runs[0].values == {"a": 1, "b": "x", "c": 0.1, "d": True, "seed": 0}
    assert runs[3].values == {"a": 1, "b": "x", "c": 0.2, "d": False, "seed": 0}
    assert len({r.run_id for r in runs}) == len(runs)
    # ids depend on the values, not the position: adding a value keeps the existing ids
    table["grid"]["a"].append(3)
    assert {r.run_id for r in runs} <= {r.run_id for r in sweep.expand(table)}


@pytest.mark.parametrize(("table", "message"), [
    ({"zip": {"a": [1, 2], "b": [1]}}, "zip lists must have the same length (a: 2, b: 1) @ $.sweep.zip"),
    ({"grid": {"a": 3}}, "grid.a must be a non-empty list of values @ $.sweep.grid.a"),
    ({"grid": {"seed": [1, 2]}}, "sweep seeds with `seeds = [...]`"),
    ({"seeds": [-1]}, "seeds must be a non-empty list of integers in 0..4294967295"),
    ({"seeds": [2**32]}, "seeds must be a non-empty list of integers in 0..4294967295"),
    ({"grd": {}}, "unknown key 'grd' (allowed: grid, seeds, zip) @ $.sweep.grd"),
])
def test_bad_sweep_tables(table, message):
    with pytest.raises(RecipeError) as info:
        sweep.expand(table, "r.toml")
    assert any(message in m for m in info.value.messages)


@pytest.mark.parametrize("value", [3, 0.001, True, "a b", [4, 8], [[1, 2], [3]], {"arch": "cnn", "channels": [4]}])
def test_values_pass_through_set_unchanged(value):
    assert parse_override(f"k={sweep.toml_value(value)}")[1] == value


def test_every_run_is_validated_before_training(write_recipe, catalogue):
    bad = SWEEP.replace('zip."stages.s.optimizer.lr" = [0.01, 0.003]', 'zip."stages.s.optimizer.lr" = [0.01, -1.0]')
    with pytest.raises(RecipeError) as info:
        sweep.plan(write_recipe(bad), catalogue)
    line = next(n for n, text in enumerate(bad.splitlines(), 1) if "-1.0" in text)
    # the runs with lr = -1.0: 2 seeds x 2 channel settings
    assert len(info.value.messages) == 1
    assert info.value.messages[0].endswith(".toml:%d: lr must be > 0, got -1.0 @ $.stages.s.optimizer.lr (from [sweep]) "
                                           "(4 of 8 sweep runs, e.g. " % line + info.value.messages[0].split(", e.g. ")[1])


def test_a_mistake_in_every_sweep_run_is_one_line(write_recipe, capsys):
    """A misspelt grid key fails all 8 runs the same way: one line saying so, not 8."""
    bad = SWEEP.replace('zip."stages.s.optimizer.lr"', 'zip."stages.s.optimizer.lrr"')
    assert bad != SWEEP
    assert main(["sweep", str(write_recipe(bad)), "--out", "unused"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "unknown key 'lrr'" in lines[0], lines
    assert "(every one of 8 sweep runs, e.g. " in lines[0]


def test_an_unquoted_dotted_grid_key_says_to_quote_it_at_its_line(write_recipe, capsys):
    bad = SWEEP.replace('grid."stages.s.model.channels"', "grid.stages.s.model.channels")
    recipe = write_recipe(bad)
    assert main(["sweep", str(recipe), "--out", "unused"]) == 2
    line = next(n for n, t in enumerate(bad.splitlines(), 1) if t.startswith("grid.stages"))
    assert capsys.readouterr().err == (f"kdlab: error: {recipe}:{line}: grid.stages is a table: quote the key path, "
                                       'grid."stages.…" = [values] @ $.sweep.grid.stages\n')


def test_sweep_runs_skips_finished_and_continues_interrupted(write_recipe, tmp_path, catalogue, capsys):
    recipe = write_recipe(SWEEP)
    plan = sweep.plan(recipe, catalogue)
    assert len(plan.runs) == 8
    first = sweep.execute(plan, out=tmp_path, catalogue=catalogue)
    assert set(first.values()) == {"finished"}
    dirs = [plan.run_dir(tmp_path, r) for r in plan.runs]
    assert all(sweep.status(d, plan.stages) == "finished" for d in dirs)
    # an interrupted run: its model and metrics are gone, its directory stays
    (dirs[0] / "models" / "s.pt").unlink()
    (dirs[0] / "metrics.json").unlink()
    assert sweep.status(dirs[0], plan.stages) == "interrupted"
    stamp = (dirs[1] / "models" / "s.pt").stat().st_mtime_ns
    second = sweep.execute(plan, out=tmp_path, catalogue=catalogue)
    assert second[plan.runs[0].run_id] == "finished"
    assert sum(v.startswith("skipped") for v in second.values()) == 7
    assert (dirs[1] / "models" / "s.pt").stat().st_mtime_ns == stamp
    # the printed commands are the same runs, ready for an external scheduler
    assert main(["sweep", str(recipe), "--out", str(tmp_path), "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8
    args = shlex.split(lines[0])
    assert args[:3] == ["kdlab", "run", str(recipe)] and args[args.index("--run-id") + 1] == plan.runs[0].run_id
    assert main(["sweep", str(recipe), "--out", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("finished ") == 8


def test_sweep_in_parallel_processes(write_recipe, tmp_path):
    recipe = write_recipe(SWEEP.replace("seeds = [0, 1]", "seeds = [0]").replace("[[4, 8], [8, 16]]", "[[4, 8]]"))
    assert main(["sweep", str(recipe), "--out", str(tmp_path), "--jobs", "2"]) == 0
    assert len(list((tmp_path / "sw").glob("*/metrics.json"))) == 2


def test_recipe_without_sweep(write_recipe, capsys):
    assert main(["sweep", str(write_recipe())]) == 2
    assert "no [sweep] table" in capsys.readouterr().err


def test_a_methods_setting_per_zip_row_applies_where_its_method_runs():
    """DKD's beta per pair: zip."stages.s.methods.dkd.beta" beside grid."stages.s.methods"."""
    table = {"seeds": [0],
             "grid": {"stages.student.methods": [{"supervised": {}}, {"supervised": {}, "dkd": {}}]},
             "zip": {"stages.teacher.model.arch": ["a", "b"], "stages.student.methods.dkd.beta": [8.0, 2.0]}}
    runs = sweep.expand(table)
    assert len(runs) == 4
    for r in runs:
        has_dkd = "dkd" in r.values["stages.student.methods"]
        assert ("stages.student.methods.dkd.beta" in r.values) == has_dkd
        if has_dkd:
            assert r.values["stages.student.methods.dkd.beta"] == {"a": 8.0, "b": 2.0}[r.values["stages.teacher.model.arch"]]
    # the overrides set the methods table first, then the beta inside it
    dkd = next(r for r in runs if "dkd" in r.values["stages.student.methods"])
    keys = [o.split("=")[0] for o in dkd.overrides]
    assert keys.index("stages.student.methods") < keys.index("stages.student.methods.dkd.beta")
    table["zip"]["stages.student.methods.dkx.beta"] = [1.0, 2.0]
    with pytest.raises(RecipeError, match="sets method 'dkx', which no row of grid"):
        sweep.expand(table)
