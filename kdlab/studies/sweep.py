"""Sweeps: a ``[sweep]`` table expands a recipe into independent runs.

    [sweep]
    seeds = [0, 1, 2]                                       # every combination runs once per seed
    grid."stages.student.model.channels" = [[4, 8], [8, 16]]  # the product of all grid lists...
    grid."stages.student.methods.pruning.sparsity" = [0.0, 0.5]
    zip."defaults.optimizer.lr" = [0.01, 0.003]              # ...times the rows of the zip lists,
    zip."stages.student.methods.logit_kd.temperature" = [4.0, 2.0]   # which vary together

A setting of one method (``zip."stages.student.methods.dkd.beta"``) beside a swept methods table
(``grid."stages.student.methods"``) applies only to the runs whose methods row enables that
method: DKD's beta per teacher -> student pair, say, without adding DKD to the other rows.

Each run is the recipe with ``--set KEY=VALUE`` for its values, in its own run directory
``<out>/<recipe name>/<run id>``; the run id is derived from the values (readable part plus a
hash), so a finished run is recognised and skipped and an interrupted one is continued when
the sweep is started again, even after values were added to the sweep.

A stage that is the same in several runs (typically the teacher: same settings, seed and
inputs) trains once: runs share ``<out>/.kdlab-stages`` (see :mod:`kdlab.engine.stage_store`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs

from kdlab.engine import limits
from kdlab.engine.errors import KdlabError, RecipeError
from kdlab.engine.processes import die_with_parent
from kdlab.engine.recipe import load_recipe, locate, read_toml, sweep_line
from kdlab.engine.registry import Catalogue, discover
from kdlab.engine.runner import run

log = logging.getLogger("kdlab")
STORE_DIR = ".kdlab-stages"  # under --out: the stages shared by the runs of sweeps and searches


@attrs.frozen
class SweepRun:
    run_id: str
    values: dict[str, Any]  # swept key -> value, "seed" included

    @classmethod
    def of(cls, values: dict[str, Any]) -> SweepRun:
        """The run for these values, named by them."""
        return cls(run_id=_slug(values), values=values)

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={toml_value(value)}" for key, value in self.values.items()]


def toml_value(value: Any) -> str:
    """A value as inline TOML text, as ``--set`` reads it. By hand: tomli_w writes whole
    documents and spreads arrays over several lines, which does not fit on a command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)  # JSON numbers and simple strings are valid TOML
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise KdlabError(f"cannot pass {value!r} as a recipe value")


def _slug(values: dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        text = "-".join(map(str, value)) if isinstance(value, list) else str(value).lower()
        parts.append(f"{key.rsplit('.', 1)[-1]}={text}")
    slug = re.sub(r"[^A-Za-z0-9_.=-]", "", "_".join(parts))[:80]
    digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:6]
    return f"{slug}-{digest}" if slug else digest


def read_sweep(path: str | Path) -> dict:
    table = read_toml(path)[1].get("sweep", {})
    if not isinstance(table, dict):
        raise RecipeError([f"{locate(path, ('sweep',))}: sweep must be a table ([sweep] with grid, zip, seeds), "
                           f"got {table!r} @ $.sweep"])
    return table


def expand(table: dict, file: str = "<recipe>") -> list[SweepRun]:
    """The runs of a ``[sweep]`` table, grid product x zip rows x seeds, in a stable order."""
    problems = []
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""

    def at(*path) -> str:  # file:line of a [sweep] key (a grid/zip key by its quoted name)
        line = sweep_line(text, path[-1]) if len(path) > 1 else None
        return f"{file}:{line}" if line else locate(file, ("sweep", *path[:1]))
    for key in table:
        if key not in ("seeds", "grid", "zip"):
            problems.append(f"{at(key)}: unknown key '{key}' (allowed: grid, seeds, zip) @ $.sweep.{key}")
    seeds = table.get("seeds", [None])
    if not isinstance(seeds, list) or not seeds or not all(
            s is None or isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= limits.SEED_MAX for s in seeds):
        problems.append(f"{at('seeds')}: seeds must be a non-empty list of integers in 0..{limits.SEED_MAX} @ $.sweep.seeds")
        seeds = [None]
    grid, zipped = table.get("grid", {}), table.get("zip", {})
    for name, part in (("grid", grid), ("zip", zipped)):
        if not isinstance(part, dict):
            problems.append(f"{at(name)}: {name} must be a table of KEY.PATH = [values] @ $.sweep.{name}")
            continue
        for key, values in part.items():
            if isinstance(values, dict):  # grid.stages.s.lr = [...]: TOML made tables of the dots
                problems.append(f"{locate(file, ('sweep', name, key))}: {name}.{key} is a table: quote the key path, "
                                f'{name}."{key}.…" = [values] @ $.sweep.{name}.{key}')
            elif not isinstance(values, list) or not values:
                problems.append(f"{at(name, key)}: {name}.{key} must be a non-empty list of values @ $.sweep.{name}.{key}")
            if key == "seed":
                problems.append(f"{at(name, key)}: sweep seeds with `seeds = [...]`, not {name}.seed @ $.sweep.{name}.seed")
    if isinstance(zipped, dict) and len({len(v) for v in zipped.values() if isinstance(v, list)}) > 1:
        lengths = ", ".join(f"{k}: {len(v)}" for k, v in zipped.items())
        problems.append(f"{at('zip')}: zip lists must have the same length ({lengths}) @ $.sweep.zip")
    # a setting of one method under a swept methods table (zip."stages.s.methods.dkd.beta" with
    # grid."stages.s.methods"): it applies to the runs whose methods row enables that method
    # (DKD's beta per teacher -> student pair), not to every run
    gated = {}
    for name, part in (("grid", grid), ("zip", zipped)):
        for key in part if isinstance(part, dict) else ():
            m = re.fullmatch(r"(stages\.[^.]+\.methods)\.([^.]+)\..+", key)
            rows = grid.get(m.group(1)) if m and isinstance(grid, dict) else None
            if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
                if not any(m.group(2) in r for r in rows):
                    problems.append(f"{at(name, key)}: {name}.{key} sets method '{m.group(2)}', which no row of "
                                    f"grid.\"{m.group(1)}\" enables @ $.sweep.{name}.{key}")
                gated[key] = (m.group(1), m.group(2))
    if problems:
        raise RecipeError(problems)
    zip_rows = [dict(zip(zipped, row)) for row in zip(*zipped.values())] if zipped else [{}]
    runs = []
    for combo in itertools.product(*grid.values()):
        for row in zip_rows:
            for seed in seeds:
                values = {**dict(zip(grid, combo)), **row}
                values = {k: v for k, v in values.items() if k not in gated or gated[k][1] in values[gated[k][0]]}
                if seed is not None:
                    values["seed"] = seed
                runs.append(SweepRun.of(values))
    return runs


def status(run_dir: Path, stages: list[str]) -> str:
    """'finished', 'interrupted' or 'new'."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and set(stages) <= set(json.loads(metrics.read_text())) and all(
        (run_dir / "models" / f"{s}.pt").is_file() for s in stages
    ):
        return "finished"
    return "interrupted" if (run_dir / "recipe.toml").is_file() else "new"


@attrs.frozen
class SweepPlan:
    recipe_path: Path
    name: str
    stages: list[str]
    runs: list[SweepRun]
    base_overrides: list[str]
    shared_stages: bool = True

    def stage_store(self, out: Path) -> Path | None:
        return out / STORE_DIR if self.shared_stages else None

    def run_dir(self, out: Path, r: SweepRun) -> Path:
        return out / self.name / r.run_id

    def command(self, r: SweepRun, out: Path) -> list[str]:
        sets = [x for o in [*self.base_overrides, *r.overrides] for x in ("--set", o)]
        store = ["--stage-store", str(self.stage_store(out))] if self.shared_stages else []
        return ["kdlab", "run", str(self.recipe_path), *sets, "--out", str(out), "--run-id", r.run_id, *store]


def _which_runs(ids: list[str], total: int) -> str:
    if len(ids) == 1:
        return f"sweep run {ids[0]}"
    return f"{'every one' if len(ids) == total else len(ids)} of {total} sweep runs, e.g. {ids[0]}"


def plan(recipe_path: str | Path, catalogue: Catalogue, overrides: list[str] = (), shared_stages: bool = True) -> SweepPlan:
    """Expand the sweep and validate every run's recipe before anything trains."""
    recipe_path = Path(recipe_path)
    table = read_sweep(recipe_path)
    if not table:
        raise KdlabError(f"{recipe_path}: no [sweep] table")
    runs = expand(table, str(recipe_path))
    failing: dict[str, list[str]] = {}  # message -> the runs it holds for: one line per mistake
    recipe = None
    for r in runs:
        try:
            recipe = load_recipe(recipe_path, catalogue, overrides, sweep_overrides=r.overrides)
        except RecipeError as exc:
            for m in exc.messages:
                failing.setdefault(m, []).append(r.run_id)
    if failing:
        raise RecipeError([f"{m} ({_which_runs(ids, len(runs))})" for m, ids in failing.items()])
    return SweepPlan(recipe_path, recipe.name, list(recipe.stages), runs, list(overrides), shared_stages)


def execute(p: SweepPlan, *, out: Path, jobs: int = 1, catalogue: Catalogue | None = None) -> dict[str, str]:
    """Run what is not finished; returns run id -> 'finished' / 'skipped' / 'failed: ...'."""
    todo = [r for r in p.runs if status(p.run_dir(out, r), p.stages) != "finished"]
    results = {r.run_id: "skipped (already finished)" for r in p.runs if r not in todo}
    log.info("sweep %s: %d runs, %d to do, %d finished", p.name, len(p.runs), len(todo), len(results))
    if jobs <= 1:
        catalogue = catalogue or discover()
        for i, r in enumerate(todo, 1):
            log.info("sweep run %d/%d: %s", i, len(todo), r.run_id)
            try:
                run(p.recipe_path, overrides=[*p.base_overrides, *r.overrides], out=out, run_id=r.run_id,
                    catalogue=catalogue, stage_store=p.stage_store(out))
                results[r.run_id] = "finished"
            except Exception as exc:  # noqa: BLE001 - one failed run must not stop the sweep
                results[r.run_id] = f"failed: {exc}"
                log.error("sweep run %s failed: %s", r.run_id, exc)
        return results

    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def one(r: SweepRun) -> tuple[str, str]:
        logfile = out / p.name / f"{r.run_id}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "kdlab", *p.command(r, out)[1:]]
        # appended, not truncated: a rerun must not erase the log of a run that is still going
        with logfile.open("a") as f:
            f.write(f"--- {shlex.join(cmd)}\n")
            f.flush()
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                  preexec_fn=die_with_parent).returncode
        return r.run_id, "finished" if code == 0 else f"failed: exit {code}, see {logfile}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for run_id, state in pool.map(one, todo):
            results[run_id] = state
            log.info("sweep run %s: %s", run_id, state)
    return results


def print_commands(p: SweepPlan, out: Path) -> str:
    return "\n".join(shlex.join(p.command(r, out)) for r in p.runs)

