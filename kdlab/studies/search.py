"""Searches: ``kdlab search RECIPE`` samples recipe settings with Optuna instead of enumerating them.

    [search]
    trials = 16                  # budget: trials completed or pruned, over all workers (and/or
    timeout_min = 60             # minutes of one worker)
    seeds = [0, 1, 2]            # each trial is the mean of one run per seed
    objectives = [               # one (a best trial) or several (a Pareto front)
      { stage = "student", metric = "test/accuracy", direction = "maximize" },
      { stage = "student", metric = "macs", direction = "minimize" },
    ]
    sampler = "tpe"              # tpe (default), random, nsga2
    pruner = { name = "median", warmup_epochs = 3 }   # none (default), median, halving, hyperband

    [search.params]              # any recipe key; int or float by the type of low / high
    "stages.student.optimizer.lr" = { low = 1e-3, high = 3e-2, log = true }
    "stages.student.methods.pruning.sparsity" = { low = 0.0, high = 0.75, step = 0.25 }
    "stages.student.model.channels" = { choices = [[4, 8], [8, 16], [8, 16, 32]] }
    "stages.student.model.se" = { choices = [false, true] }
    "stages.student.methods.pruning.end_epoch" = { low = 5, high = 12, when = { "stages.student.model.se" = true } }

A trial's runs are ordinary run directories ``<out>/<recipe name>/<run id>`` (the run id comes
from the values, as in a sweep), so ``kdlab report`` reads them and a trial whose values were
run before reuses them. Stages that are the same in several trials (the teacher) train once
(``<out>/.kdlab-stages``). The study lives in Optuna storage: by default the SQLite file
``<out>/<recipe name>/study.db``; ``--storage URL --study NAME`` (any URL Optuna accepts, or
``journal:PATH`` for Optuna's journal file on a shared file system) lets workers on several
machines, or a SLURM array, work on one study. A stopped study continues where it was: the
interrupted trial is tried again with the same values and resumes its runs from their
checkpoints.

Pruning watches a validation metric of the objective's stage at every epoch end (the
``trial_pruning`` plugin) in the trial's first seed; a pruned trial is recorded as PRUNED and its
other seeds are not run. Optuna prunes single-objective studies only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import Factory, field
from attrs import validators as v

from kdlab.engine import checkpoint, limits
from kdlab.engine.errors import KdlabError, RecipeError, missing_extra
from kdlab.engine.processes import die_with_parent
from kdlab.engine.recipe import Problems, load_recipe, locate, parse_override, read_toml, set_key, sweep_line
from kdlab.engine.registry import Catalogue, discover
from kdlab.engine.runner import run
from kdlab.studies.sweep import STORE_DIR, SweepRun

log = logging.getLogger("kdlab")
META = "search.json"  # in the study directory: what `kdlab report` needs to find the study


def _number(_inst, attribute, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        raise ValueError(f"must be a finite number, got {value!r}")


@attrs.frozen(kw_only=True)
class ParamSpace:
    """One searched key: ``choices`` (categorical) or ``low``..``high`` (int if both are integers)."""

    low: Any = field(default=None, validator=_number)  # int or float: TOML's type decides
    high: Any = field(default=None, validator=_number)
    step: Any = field(default=None, validator=[_number, v.optional(v.gt(0))])
    log: bool = False
    choices: list[Any] | None = None
    when: dict[str, Any] = Factory(dict)  # sampled only when these earlier keys have these values

    @property
    def is_int(self) -> bool:
        return all(isinstance(x, int) and not isinstance(x, bool) for x in (self.low, self.high)) and (
            self.step is None or isinstance(self.step, int))


@attrs.frozen(kw_only=True)
class Objective:
    metric: str
    stage: str | None = None  # default: the recipe's last stage
    direction: Literal["maximize", "minimize"] = "maximize"


@attrs.frozen(kw_only=True)
class PrunerConfig:
    name: Literal["none", "median", "halving", "hyperband"] = "none"
    metric: str | None = None  # an epoch-end metric; default: the objective's, test/ -> val/
    startup_trials: int = field(default=5, validator=v.ge(0))  # median: trials never pruned
    warmup_epochs: int = field(default=1, validator=v.ge(0))  # median: epochs never pruned
    min_epochs: int = field(default=1, validator=v.ge(1))  # halving / hyperband: the first rung
    reduction_factor: int = field(default=3, validator=v.ge(2))  # halving / hyperband


@attrs.frozen(kw_only=True)
class SearchConfig:
    params: dict[str, ParamSpace]
    objectives: list[Objective]
    seeds: list[int] = field(factory=lambda: [0], validator=v.deep_iterable(limits.seed))
    trials: int | None = field(default=None, validator=v.optional(v.ge(1)))
    timeout_min: float | None = field(default=None, validator=v.optional(v.gt(0)))
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    startup_trials: int = field(default=10, validator=v.ge(0))  # tpe: random trials first
    seed: int = field(default=0, validator=limits.seed)  # the sampler's
    pruner: PrunerConfig = Factory(PrunerConfig)


@attrs.frozen
class SearchPlan:
    recipe_path: Path
    name: str  # the recipe's: the study directory is <out>/<name>
    stages: list[str]
    config: SearchConfig
    base_overrides: list[str]
    objectives: list[Objective]  # with their stage filled in
    prune_metric: str | None  # None: no pruning


def _optuna():
    try:
        import optuna
    except ImportError as exc:
        raise missing_extra("search", "optuna", "kdlab search") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kdlab logs each trial itself
    return optuna


def plan(recipe_path: str | Path, catalogue: Catalogue, overrides: list[str] = ()) -> SearchPlan:
    """Read and validate the ``[search]`` table, and the recipe at the ends of every range."""
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path, catalogue, overrides)  # the base recipe's own errors first
    text, table = read_toml(recipe_path)
    raw = table.get("search")
    if raw is None:
        raise KdlabError(f"{recipe_path}: no [search] table (see `kdlab search --help`)")
    for item in overrides:  # --set search.trials=30 and the like
        keys, value = parse_override(item)
        if keys[0] == "search" and len(keys) > 1 and isinstance(raw, dict):
            set_key(raw, keys[1:], value, item)
    problems = Problems(str(recipe_path), text, {})
    config = problems.structure(raw, SearchConfig, ("search",))
    problems.raise_if_any()

    def at(*path) -> str:
        line = sweep_line(text, path[-1], "search") if path[:1] == ("params",) else None
        return f"{recipe_path}:{line}" if line else locate(recipe_path, ("search", *path[:1]))

    messages = []
    if config.trials is None and config.timeout_min is None:
        messages.append(f"{at('trials')}: a search needs a budget: trials and/or timeout_min @ $.search")
    if not config.objectives:
        messages.append(f"{at('objectives')}: name at least one objective "
                        "({ metric = ..., direction = ... }) @ $.search.objectives")
    if not config.seeds:
        messages.append(f"{at('seeds')}: seeds must name at least one seed @ $.search.seeds")
    if not config.params:
        messages.append(f"{at('params')}: [search.params] must name at least one recipe key @ $.search.params")
    stages = list(recipe.stages)
    objectives = []
    for i, o in enumerate(config.objectives):
        if o.stage is not None and o.stage not in recipe.stages:
            messages.append(f"{at('objectives')}: objective stage '{o.stage}' is not a stage of the recipe "
                            f"(stages: {', '.join(stages)}) @ $.search.objectives[{i}].stage")
        objectives.append(attrs.evolve(o, stage=o.stage or stages[-1]))
    seen: dict[str, ParamSpace] = {}
    for key, p in config.params.items():
        where = f"@ $.search.params.{key}"
        if key == "seed" or key.startswith("search."):
            messages.append(f"{at('params', key)}: '{key}' cannot be searched (seeds are `seeds = [...]`) {where}")
        if (p.choices is None) == (p.low is None and p.high is None):
            messages.append(f"{at('params', key)}: give either choices = [...] or low and high {where}")
        elif p.choices is not None:
            if not p.choices:
                messages.append(f"{at('params', key)}: choices must not be empty {where}")
            if p.log or p.step is not None:
                messages.append(f"{at('params', key)}: log and step apply to low..high ranges, not choices {where}")
        elif p.low is None or p.high is None:
            messages.append(f"{at('params', key)}: a range needs both low and high {where}")
        elif not p.low < p.high:
            messages.append(f"{at('params', key)}: low must be < high, got {p.low} and {p.high} {where}")
        elif p.log and (p.low <= 0 or p.step is not None):
            messages.append(f"{at('params', key)}: a log range needs low > 0 and no step {where}")
        for other, value in p.when.items():
            if other not in seen:
                messages.append(f"{at('params', key)}: when names '{other}', which is not a searched key declared "
                                f"above this one {where}.when")
            elif seen[other].choices is not None and value not in seen[other].choices:
                messages.append(f"{at('params', key)}: when asks '{other}' = {value!r}, not one of its choices "
                                f"{where}.when")
        seen[key] = p
    pruning = config.pruner.name != "none"
    prune_metric = None
    if pruning and len(objectives) > 1:
        messages.append(f"{at('pruner')}: Optuna prunes single-objective studies only; use one objective or "
                        "pruner = { name = 'none' } @ $.search.pruner.name")
    elif pruning and objectives:
        metric = config.pruner.metric or objectives[0].metric
        if metric.startswith("test/"):
            metric = "val/" + metric[len("test/"):]
        if not metric.startswith("val/"):
            messages.append(f"{at('pruner')}: the pruner watches an epoch-end validation metric; set "
                            f"pruner.metric (e.g. 'val/accuracy'), '{metric}' is not one @ $.search.pruner.metric")
        prune_metric = metric
    if messages:
        raise RecipeError(messages)
    # every range end and every choice must make a valid recipe (combinations are checked when run)
    for key, p in config.params.items():
        for value in (p.choices if p.choices is not None else [p.low, p.high]):
            try:
                load_recipe(recipe_path, catalogue, overrides, sweep_overrides=SweepRun("-", {key: value}).overrides,
                            table="search")
            except RecipeError as exc:
                messages += exc.messages
    if messages:
        raise RecipeError(list(dict.fromkeys(messages)))
    return SearchPlan(recipe_path, recipe.name, stages, config, list(overrides), objectives, prune_metric)


# ---------------------------------------------------------------------------------------------
# Storage and study.
# ---------------------------------------------------------------------------------------------

def storage(url: str | None, study_dir: Path):
    """Optuna storage for ``url`` (default: SQLite ``study_dir/study.db``); ``journal:PATH`` is
    Optuna's journal file (for a shared file system where SQLite's locking is unreliable)."""
    optuna = _optuna()
    from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    # several workers write one SQLite file: wait for its lock rather than fail at once
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        # a worker that dies stops its heartbeat; its trial is failed after the grace period
        # and tried again with the same values (so its runs resume from their checkpoints)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
                retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
            else:
                retry = {"failed_trial_callback": RetryFailedTrialCallback(max_retry=3)}
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=120, **retry)
    except (ImportError, ModuleNotFoundError) as exc:
        raise KdlabError(f"--storage {url}: the database driver is not installed ({exc})") from exc
    except optuna.exceptions.OptunaError as exc:
        raise KdlabError(f"--storage {url}: {exc}") from exc


def open_study(p: SearchPlan, study_dir: Path, storage_url: str | None, study_name: str | None,
               worker: int | None = None):
    """The study (created if new). ``worker``: this worker's index among several, which offsets
    the sampler's seed so that workers do not propose the same values."""
    optuna = _optuna()
    directions = [o.direction for o in p.objectives]
    seed = p.config.seed + (worker or 0)
    if p.config.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif p.config.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    else:  # constant_liar: parallel workers do not all propose the same point
        conditional = any(sp.when for sp in p.config.params.values())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=p.config.startup_trials,
                                                 multivariate=True, group=conditional, constant_liar=True)
    c = p.config.pruner
    pruner = {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=c.startup_trials, n_warmup_steps=c.warmup_epochs),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=c.min_epochs,
                                                                  reduction_factor=c.reduction_factor),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=c.min_epochs, max_resource="auto",
                                                            reduction_factor=c.reduction_factor),
    }[c.name]()
    name = study_name or p.name
    study = optuna.create_study(storage=storage(storage_url, study_dir), study_name=name, sampler=sampler,
                                pruner=pruner, directions=directions, load_if_exists=True)
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise KdlabError(f"study '{name}' exists with other objectives ({len(study.directions)} directions); "
                         "name a new study with --study")
    return study


# ---------------------------------------------------------------------------------------------
# Trials.
# ---------------------------------------------------------------------------------------------

def _scalar(x) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def suggest(trial, params: dict[str, ParamSpace]) -> dict[str, Any]:
    """The recipe values of one trial (a key whose ``when`` does not hold is left at the recipe's)."""
    values: dict[str, Any] = {}
    missing = object()
    for key, p in params.items():
        if any(values.get(k, missing) != want for k, want in p.when.items()):
            continue
        if p.choices is not None:
            if all(_scalar(c) for c in p.choices):
                values[key] = trial.suggest_categorical(key, p.choices)
            else:  # Optuna's categorical choices are scalars: lists travel as JSON text
                values[key] = json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in p.choices]))
        elif p.is_int:
            values[key] = trial.suggest_int(key, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[key] = trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=p.log)
    return values


class TrialFailed(Exception):
    """A trial's run failed (a bad combination of values, a diverged loss): the study goes on."""


def trained_epochs(run_dir: Path) -> int:
    """Epochs this run trained itself (stages reused from the stage store do not count)."""
    total = 0
    for path in (run_dir / "history").glob("*.jsonl"):
        if not path.with_suffix(".reused").exists():
            total += sum(1 for line in path.read_text().splitlines() if line)
    return total


def objective_fn(p: SearchPlan, out: Path, catalogue: Catalogue):
    optuna = _optuna()
    from kdlab.infra.trial_pruning import TrialPruning

    def objective(trial):
        values = suggest(trial, p.config.params)
        per_seed, run_dirs = [], []
        try:
            for i, seed in enumerate(p.config.seeds):
                r = SweepRun.of({**values, "seed": seed})
                cat = catalogue
                if p.prune_metric is not None and i == 0:  # the pruner judges the first seed's curve
                    cat = discover(extra={"trial_pruning": TrialPruning(trial, p.objectives[0].stage, p.prune_metric)})
                run_dirs.append(str((out / p.name / r.run_id).resolve()))
                trial.set_user_attr("runs", run_dirs)
                log.info("trial %d, seed %d: %s", trial.number, seed, " ".join(r.overrides))
                try:
                    result = run(p.recipe_path, overrides=[*p.base_overrides, *r.overrides], out=out, run_id=r.run_id,
                                 catalogue=cat, stage_store=out / STORE_DIR, wait=True)
                except (KdlabError, RuntimeError, ValueError) as exc:
                    trial.set_user_attr("error", str(exc).splitlines()[0][:500])
                    log.error("trial %d failed: %s", trial.number, exc)
                    raise TrialFailed(str(exc)) from exc
                per_seed.append([_metric(result.metrics, o, r.run_id) for o in p.objectives])
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # tried again when the study is continued
            _interrupted_trials.add(trial.number)
            log.warning("trial %d interrupted; it is tried again when the study is continued", trial.number)
            raise
        columns = list(zip(*per_seed))
        trial.set_user_attr("per_seed", per_seed)
        trial.set_user_attr("std", [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns])
        means = [statistics.fmean(c) for c in columns]
        log.info("trial %d: %s", trial.number, ", ".join(f"{o.metric} {m:.4g}" for o, m in zip(p.objectives, means)))
        return means[0] if len(means) == 1 else means

    return objective, (TrialFailed, optuna.TrialPruned)


def _metric(metrics: dict, o: Objective, run_id: str) -> float:
    value = metrics.get(o.stage, {}).get(o.metric)
    if value is None or not isinstance(value, (int, float)):
        raise KdlabError(f"objective metric '{o.metric}' is not among stage {o.stage}'s final metrics in run "
                         f"{run_id} (it has: {', '.join(sorted(metrics.get(o.stage, {}))) or 'none'})")
    if not math.isfinite(value):
        raise TrialFailed(f"{o.metric} is {value}")
    return float(value)


def _retry_interrupted(study) -> None:
    """Queue again, once, the values of trials that a Ctrl-C or a kill stopped."""
    optuna = _optuna()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            log.info("trial %d was interrupted; trying its values again", t.number)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)


def counted(study) -> int:
    optuna = _optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def worker_index() -> int | None:
    """This worker's index: set by ``--workers``, or a SLURM array's task id; None if neither."""
    for var in ("KDLAB_SEARCH_WORKER", "SLURM_ARRAY_TASK_ID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def execute(p: SearchPlan, *, out: Path, storage_url: str | None = None, study_name: str | None = None,
            catalogue: Catalogue | None = None, max_failures: int = 5):
    """One worker: run trials until the budget is spent. Returns the study."""
    study_dir = out / p.name
    worker = worker_index()
    if worker is None and storage_url is not None:  # a worker started by hand on a shared study
        worker = os.getpid()
    study = open_study(p, study_dir, storage_url, study_name, worker)
    _write_meta(p, study_dir, storage_url, study.study_name)
    _retry_interrupted(study)
    c = p.config
    if c.trials is not None and counted(study) >= c.trials:
        log.info("search %s: %d trials done; the budget (%d) is spent", study.study_name, counted(study), c.trials)
        return study
    objective, catch = objective_fn(p, out, catalogue or discover())
    failures: list[str] = []

    def stop_when_done(study, trial):
        if c.trials is not None and counted(study) >= c.trials:
            study.stop()
        failures[:] = failures + [trial.user_attrs.get("error", "")] if trial.state.name == "FAIL" else []
        if len(failures) >= max_failures:
            study.stop()

    log.info("search %s: storage %s", study.study_name, storage_url or study_dir / "study.db")
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(_quiet_interrupt)
    try:
        study.optimize(objective, n_trials=None, timeout=c.timeout_min * 60 if c.timeout_min else None, catch=catch,
                       callbacks=[stop_when_done], gc_after_trial=True, show_progress_bar=False)
    finally:
        optuna_log.removeFilter(_quiet_interrupt)
    if len(failures) >= max_failures:
        raise KdlabError(f"search {study.study_name}: {max_failures} trials in a row failed; the last: {failures[-1]}")
    return study


_interrupted_trials: set[int] = set()


def _quiet_interrupt(record: logging.LogRecord) -> bool:
    """Optuna logs a trial stopped by Ctrl-C or SIGTERM as failed, with the interrupt's
    traceback; kdlab says it was interrupted (one line) and retries it when the study continues."""
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
        return False
    message = record.getMessage()
    return not any(message.startswith(f"Trial {n} failed") for n in _interrupted_trials)


def spawn_workers(argv: list[str], workers: int, study_dir: Path) -> int:
    """Start ``workers`` copies of this ``kdlab search`` command on one study; wait for them."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    study_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(workers):
        logfile = (study_dir / f"worker-{i}.log").open("a")
        cmd = [sys.executable, "-m", "kdlab", *argv, "--workers", "1"]
        procs.append((subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT,
                                       env={**env, "KDLAB_SEARCH_WORKER": str(i)},
                                       preexec_fn=die_with_parent), logfile))
        log.info("worker %d: pid %d, log %s", i, procs[-1][0].pid, logfile.name)
        time.sleep(1.0)  # the first worker creates the study; the others then load it
    codes = [proc.wait() for proc, _ in procs]
    for _, f in procs:
        f.close()
    return max(codes)


def _write_meta(p: SearchPlan, study_dir: Path, storage_url: str | None, study_name: str) -> None:
    study_dir.mkdir(parents=True, exist_ok=True)
    meta = {"study": study_name, "storage": storage_url, "recipe": str(p.recipe_path),
            "objectives": [attrs.asdict(o) for o in p.objectives], "seeds": p.config.seeds,
            "prune_metric": p.prune_metric}
    checkpoint.save_json(meta, study_dir / META)


# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------

def is_study_dir(path: Path) -> bool:
    return (Path(path) / META).is_file()


def load_study(study_dir: Path):
    meta = json.loads((Path(study_dir) / META).read_text())
    optuna = _optuna()
    try:
        study = optuna.load_study(study_name=meta["study"], storage=storage(meta["storage"], Path(study_dir)))
    except KeyError as exc:
        raise KdlabError(f"{study_dir}: study '{meta['study']}' is not in its storage") from exc
    return study, meta


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and value.startswith("["):
        return value.replace(" ", "")
    return str(value)


def report(study_dir: Path, top: int = 10) -> str:
    """Markdown: trial counts, the best trials (or the Pareto front), parameter importances."""
    optuna = _optuna()
    study, meta = load_study(study_dir)
    objectives = [Objective(**o) for o in meta["objectives"]]
    trials = study.get_trials(deepcopy=False)
    by_state = {s: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    epochs = sum(trained_epochs(Path(d)) for d in {d for t in trials for d in t.user_attrs.get("runs", [])}
                 if Path(d).is_dir())
    lines = [f"# study {study.study_name}: {len(trials)} trials ({by_state[optuna.trial.TrialState.COMPLETE]} complete, "
             f"{by_state[optuna.trial.TrialState.PRUNED]} pruned, {by_state[optuna.trial.TrialState.FAIL]} failed, "
             f"{by_state[optuna.trial.TrialState.RUNNING]} running); {epochs} epochs trained; "
             f"each trial the mean of {len(meta['seeds'])} seed(s)", ""]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return "\n".join(lines + ["no complete trial yet"]) + "\n"
    if len(objectives) == 1:
        sign = -1 if objectives[0].direction == "maximize" else 1
        shown = sorted(complete, key=lambda t: sign * t.value)[:top]
        lines.append(f"## best {len(shown)} trials by {objectives[0].stage} {objectives[0].metric}")
    else:
        shown = sorted(study.best_trials, key=lambda t: t.values[-1])
        lines.append(f"## Pareto front ({len(shown)} trials)")
    keys = list(dict.fromkeys(k for t in shown for k in t.params))
    head = ["trial", *[k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] if k.count(".") else k for k in keys],
            *[f"{o.stage} {o.metric}" for o in objectives]]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in shown:
        stds = t.user_attrs.get("std", [0.0] * len(objectives))
        cells = [str(t.number), *[_fmt(t.params.get(k, "-")) for k in keys],
                 *[f"{val:.4g} ± {sd:.2g}" for val, sd in zip(t.values, stds)]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## parameter importances (fANOVA over complete trials)", ""]
    for i, o in enumerate(objectives):
        try:
            imp = optuna.importance.get_param_importances(study, target=(lambda t, i=i: t.values[i]),
                                                          evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (RuntimeError, ValueError) as exc:  # too few trials, or no parameter varies
            lines.append(f"- {o.metric}: not available ({exc})")
            continue
        lines.append(f"- {o.stage} {o.metric}: " + ", ".join(f"{k} {val:.2f}" for k, val in imp.items()))
    return "\n".join(lines) + "\n"


def plots(study_dir: Path, out: Path) -> list[Path]:
    """Trial history, importances, Pareto front, pruning curves: PNG files and TensorBoard images."""
    from kdlab.studies import plots as report_plots  # raises the plots extra's error if missing

    optuna = _optuna()
    import warnings

    from optuna.visualization import matplotlib as ovm

    study, meta = load_study(study_dir)
    objectives = [Objective(**o) for o in meta["objectives"]]
    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for i, o in enumerate(objectives):
            name = o.metric.replace("/", "_")
            target = (lambda t, i=i: t.values[i]) if len(objectives) > 1 else None
            figures[f"history_{name}"] = ovm.plot_optimization_history(study, target=target, target_name=o.metric).figure
            try:
                figures[f"importance_{name}"] = ovm.plot_param_importances(
                    study, target=target, target_name=o.metric,
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)).figure
            except (RuntimeError, ValueError):
                pass
        if len(objectives) > 1:
            figures["pareto_front"] = ovm.plot_pareto_front(study, target_names=[o.metric for o in objectives]).figure
        if meta.get("prune_metric"):
            figures["pruning_curves"] = ovm.plot_intermediate_values(study).figure
    return report_plots.write(figures, out)
