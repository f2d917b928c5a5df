"""kdlab search: the [search] table's validation, sampling, trials as the mean of seeded runs,
pruning, continuing an interrupted study, several workers on one study, and the study report."""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna")  # the `search` extra

from kdlab import hookimpl
from kdlab.cli import main
from kdlab.engine.errors import KdlabError, RecipeError
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from kdlab.infra.trial_pruning import TrialPruning
from kdlab.studies import search

BASE = """
name = "srch"
seed = 0
device = "cpu"
[data]
dataset = "digits"
batch_size = 128
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[defaults]
epochs = 3
optimizer = { name = "adam", lr = 0.01 }
[stages.teacher]
model = { arch = "cnn", channels = [8, 16] }
methods.supervised = {}
[stages.student]
model = { arch = "cnn", channels = [4, 8] }
teachers = ["teacher"]
methods.logit_kd = { temperature = 4.0, alpha = 0.5 }
"""

SEARCH = BASE + """
[search]
trials = 3
seeds = [0, 1]
startup_trials = 2
objectives = [{ metric = "test/accuracy" }]
[search.params]
"stages.student.optimizer.lr" = { low = 1e-3, high = 3e-2, log = true }
"stages.student.model.channels" = { choices = [[4, 8], [8, 8]] }
"""


def _line(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(("edit", "needle", "message"), [
    (("trials = 3\n", ""), "[search]", "a search needs a budget: trials and/or timeout_min @ $.search"),
    (("seeds = [0, 1]", "sedes = [0, 1]"), "sedes", "unknown key 'sedes'"),
    (("low = 1e-3, high = 3e-2", "low = 3e-2, high = 1e-3"), "optimizer.lr", "low must be < high, got 0.03 and 0.001"),
    (("low = 1e-3, high = 3e-2, log = true", "low = 0.0, high = 3e-2, log = true"), "optimizer.lr",
     "a log range needs low > 0 and no step"),
    (("{ choices = [[4, 8], [8, 8]] }", "{ choices = [[4, 8]], low = 1 }"), "model.channels",
     "give either choices = [...] or low and high"),
    (("low = 1e-3, high = 3e-2, log = true", "low = -1.0, high = 3e-2"), "optimizer.lr",
     "lr must be > 0, got -1.0 @ $.stages.student.optimizer.lr (from [search])"),
    (('"stages.student.optimizer.lr"', '"stages.student.optimiser.lr"'), "optimiser",
     "unknown key 'optimiser'"),
    (('metric = "test/accuracy" }', 'metric = "test/accuracy", stage = "studnet" }'), "objectives",
     "objective stage 'studnet' is not a stage of the recipe (stages: teacher, student)"),
    (('metric = "test/accuracy" }]', 'metric = "test/accuracy" }, { metric = "macs", direction = "minimize" }]\n'
      'pruner = { name = "median" }'), "pruner", "Optuna prunes single-objective studies only"),
    (('metric = "test/accuracy" }]', 'metric = "macs", direction = "minimize" }]\npruner = { name = "halving" }'),
     "pruner", "the pruner watches an epoch-end validation metric"),
    (('{ choices = [[4, 8], [8, 8]] }', '{ choices = [[4, 8], [8, 8]], when = { "stages.student.model.se" = true } }'),
     "model.channels", "when names 'stages.student.model.se', which is not a searched key declared above"),
    (("trials = 3", "trials = 0"), "trials = 0", "trials must be >= 1, got 0 @ $.search.trials"),
])
def test_bad_search_tables_name_the_line_and_key(write_recipe, catalogue, edit, needle, message):
    text = SEARCH.replace(*edit)
    assert text != SEARCH
    with pytest.raises(RecipeError) as info:
        search.plan(write_recipe(text), catalogue)
    hits = [m for m in info.value.messages if message in m]
    assert hits, info.value.messages
    assert hits[0].startswith(f"{info.value.messages[0].split('.toml')[0]}.toml:{_line(text, needle)}: "), hits


def test_suggest_passes_lists_and_honours_when():
    params = {
        "a": search.ParamSpace(choices=[[4, 8], [8, 16, 32]]),
        "b": search.ParamSpace(choices=[False, True]),
        "c": search.ParamSpace(low=1, high=9, step=2),
        "d": search.ParamSpace(low=0.5, high=2.0, when={"b": True}),
    }
    on = search.suggest(optuna.trial.FixedTrial({"a": "[8, 16, 32]", "b": True, "c": 5, "d": 1.5}), params)
    assert on == {"a": [8, 16, 32], "b": True, "c": 5, "d": 1.5}
    off = search.suggest(optuna.trial.FixedTrial({"a": "[4, 8]", "b": False, "c": 3}), params)
    assert off == {"a": [4, 8], "b": False, "c": 3}  # d is not sampled: its condition does not hold


def _study(out, name="srch"):
    return search.load_study(out / name)[0]


def test_a_trial_is_the_mean_of_its_seeds_and_the_teacher_trains_once_per_seed(write_recipe, tmp_path, catalogue,
                                                                              capsys):
    recipe = write_recipe(SEARCH)
    p = search.plan(recipe, catalogue)
    search.execute(p, out=tmp_path, catalogue=catalogue)
    study = _study(tmp_path)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for t in trials:
        runs = [json.loads((tmp_path / "srch" / d.split("/")[-1] / "metrics.json").read_text()) for d in t.user_attrs["runs"]]
        assert len(runs) == 2
        accuracies = [m["student"]["test/accuracy"] for m in runs]
        assert t.value == pytest.approx(statistics.fmean(accuracies))
        assert t.user_attrs["std"][0] == pytest.approx(statistics.stdev(accuracies))
    teachers_trained = [d for d in (tmp_path / "srch").glob("*/history/teacher.jsonl")
                        if not d.with_suffix(".reused").exists()]
    assert len(teachers_trained) == 2  # one per seed, reused by the other trials
    # the budget is spent: running again adds no trial
    search.execute(p, out=tmp_path, catalogue=catalogue)
    assert len(_study(tmp_path).get_trials()) == 3
    assert main(["report", str(tmp_path / "srch"), "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "3 trials (3 complete, 0 pruned, 0 failed, 0 running)" in out
    best = max(trials, key=lambda t: t.value)
    assert f"| {best.number} |" in out.split("## best")[1].splitlines()[4]
    assert "optimizer.lr" in out.split("parameter importances")[1]
    assert (tmp_path / "plots" / "history_test_accuracy.png").is_file()


class _Interrupt:
    """Stops the first run it sees after one epoch, as Ctrl-C would."""

    default_enabled = True
    fired = False

    @hookimpl
    def kdlab_epoch_end(self, stage, epoch, metrics):
        if stage.name == "student" and not _Interrupt.fired:
            _Interrupt.fired = True
            raise KeyboardInterrupt


def test_an_interrupted_study_continues_with_the_same_values_and_resumes_the_runs(write_recipe, tmp_path, catalogue,
                                                                                  monkeypatch):
    recipe = write_recipe(SEARCH.replace("trials = 3", "trials = 1").replace("seeds = [0, 1]", "seeds = [0]"))
    p = search.plan(recipe, catalogue)
    seen = []  # what Optuna's own handler (on its "optuna" logger, which does not propagate) is given
    collect = logging.Handler()
    collect.emit = seen.append
    logging.getLogger("optuna").addHandler(collect)
    try:
        with pytest.raises(KeyboardInterrupt):
            search.execute(p, out=tmp_path, catalogue=discover(extra={"interrupt": _Interrupt}))
    finally:
        logging.getLogger("optuna").removeHandler(collect)
    # Optuna's "trial failed" warning printed the interrupt's traceback
    assert not [r.getMessage() for r in seen if r.exc_info or "failed" in r.getMessage()]
    first = _study(tmp_path).get_trials()[0]
    assert first.state == optuna.trial.TrialState.FAIL and first.user_attrs["interrupted"]
    search.execute(p, out=tmp_path, catalogue=catalogue)
    trials = _study(tmp_path).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials[1].params == first.params and trials[1].user_attrs["runs"] == first.user_attrs["runs"]
    # resumed from its checkpoint, it ends where an uninterrupted run of the same values ends
    values = search.suggest(optuna.trial.FixedTrial(first.params), p.config.params)
    alone = run(recipe, overrides=search.SweepRun.of({**values, "seed": 0}).overrides, out=tmp_path / "alone",
                catalogue=catalogue)
    assert trials[1].value == alone.metrics["student"]["test/accuracy"]


def test_the_pruning_plugin_stops_a_losing_run_after_its_epoch_is_recorded(write_recipe, tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1,
                                                                                         n_warmup_steps=0))
    done = study.ask()
    for epoch in (1, 2, 3):
        done.report(1.0, epoch)  # a perfect earlier trial: the median any real run is below
    study.tell(done, 1.0)
    trial = study.ask()
    recipe = write_recipe(BASE)
    catalogue = discover(extra={"trial_pruning": TrialPruning(trial, "student", "val/accuracy")})
    with pytest.raises(optuna.TrialPruned):
        run(recipe, out=tmp_path, run_id="r", catalogue=catalogue)
    history = (tmp_path / "srch" / "r" / "history" / "student.jsonl").read_text().splitlines()
    assert len(history) == 1  # pruned after the first epoch, whose line was written first
    assert list(study.trials[1].intermediate_values) == [1]
    assert (tmp_path / "srch" / "r" / "history" / "teacher.jsonl").read_text().count("\n") == 3  # not watched


def test_a_pruned_trial_is_recorded_and_its_other_seeds_are_not_run(write_recipe, tmp_path, catalogue):
    text = SEARCH.replace("trials = 3", "trials = 2") + "\n[search.pruner]\nname = 'median'\nstartup_trials = 1\nwarmup_epochs = 0\n"
    text = text.replace('"stages.student.model.channels" = { choices = [[4, 8], [8, 8]] }\n', "")
    p = search.plan(write_recipe(text), catalogue)
    study = search.open_study(p, tmp_path / "srch", None, None)
    dist = optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)
    study.add_trial(optuna.trial.create_trial(params={"stages.student.optimizer.lr": 0.01},
                                              distributions={"stages.student.optimizer.lr": dist}, value=1.0,
                                              intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    search.execute(p, out=tmp_path, catalogue=catalogue)
    pruned = _study(tmp_path).get_trials()[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert len(pruned.user_attrs["runs"]) == 1  # seed 1 was not run
    assert search.counted(_study(tmp_path)) == 2


def test_two_worker_processes_share_one_sqlite_study(write_recipe, tmp_path):
    recipe = write_recipe(SEARCH.replace("trials = 3", "trials = 4").replace("seeds = [0, 1]", "seeds = [0]"))
    done = subprocess.run([sys.executable, "-m", "kdlab", "search", str(recipe), "--out", str(tmp_path), "--workers", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    logs = [(tmp_path / "srch" / f"worker-{i}.log").read_text() for i in (0, 1)]
    assert all("trial " in log for log in logs), logs  # both workers ran trials
    trials = _study(tmp_path).get_trials()
    assert search.counted(_study(tmp_path)) >= 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.number for t in trials}) == len(trials)
    assert "study srch:" in done.stdout


def test_journal_storage_and_a_named_study(write_recipe, tmp_path):
    recipe = write_recipe(SEARCH.replace("trials = 3", "trials = 1").replace("seeds = [0, 1]", "seeds = [0]"))
    journal = tmp_path / "shared" / "journal.log"
    args = ["search", str(recipe), "--out", str(tmp_path), "--storage", f"journal:{journal}", "--study", "mine"]
    assert main(args) == 0
    assert journal.is_file()
    loaded = optuna.load_study(study_name="mine", storage=search.storage(f"journal:{journal}", tmp_path))
    assert [t.state.name for t in loaded.get_trials()] == ["COMPLETE"]
    assert main(["report", str(tmp_path / "srch")]) == 0  # the study directory names the journal


def test_a_misspelt_objective_metric_stops_the_search(write_recipe, tmp_path, capfd):
    recipe = write_recipe(SEARCH.replace('"test/accuracy"', '"test/acuracy"'))
    assert main(["search", str(recipe), "--out", str(tmp_path)]) == 2
    err = capfd.readouterr().err
    assert "objective metric 'test/acuracy' is not among stage student's final metrics" in err
    assert "Traceback" not in err


def test_failing_trials_do_not_stop_the_study_until_too_many_fail(write_recipe, tmp_path, catalogue):
    # a damaged model file to start from fails its trial at run time; the search goes on
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    text = SEARCH.replace('"stages.student.optimizer.lr" = { low = 1e-3, high = 3e-2, log = true }',
                          f'"stages.student.init" = {{ choices = ["{tmp_path / "bad.pt"}"] }}')
    p = search.plan(write_recipe(text), catalogue)
    with pytest.raises(KdlabError, match="2 trials in a row failed; the last: .*bad.pt"):
        search.execute(p, out=tmp_path, catalogue=catalogue, max_failures=2)
    trials = _study(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"] and "bad.pt" in trials[0].user_attrs["error"]
