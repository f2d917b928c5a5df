"""Tables laid out like the papers': ``kdlab report RUN_DIR --rows KEYS --columns KEY`` for any
sweep, and ``kdlab report RUN_DIR --published FILE`` beside a published table.

Each cell is one group of runs that differ only by seed: the mean +- *sample* std over the seeds
of the metric at the last epoch and at the best epoch, ``last / best (n)``. The papers mix the
two (CRD and mdistiller report the best test epoch, others the last), so both are given. The
best epoch's value is the best *test* value over the epochs, as those papers take it, when the
stage evaluated the test split at every evaluation (``eval_test = true``); without that history
it is the best validation value, shown ``[val ...]``. Rows and columns are recipe keys
(``stages.student.model.arch``; several row keys make ``a -> b``); ``stages.<s>.methods`` names a
column by its methods (``supervised`` aside; "alone" when none is left).

FILE (TOML) names its source, the metric, the teacher and student stages, the published columns
with the methods that make each (the student stage's methods, ``supervised`` aside), and one row
per teacher -> student pair with the published values (see ``docs/published/cifar100.toml``):
its rows are the teacher and student architectures, its columns the methods, and each cell gets
``pub. X`` beside it. Groups whose methods no published column names get columns of their own.
The command that made the table is printed under it.
"""

from __future__ import annotations

import statistics
import tomllib
from pathlib import Path

from kdlab.engine.errors import KdlabError
from kdlab.studies.aggregate import Run, lower_is_better


def load_table(path: str | Path) -> dict:
    try:
        table = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise KdlabError(f"{path}: cannot read the published table ({exc})") from exc
    for key in ("source", "metric", "columns", "rows"):
        if key not in table:
            raise KdlabError(f"{path}: the published table needs a '{key}' key")
    for i, row in enumerate(table["rows"]):
        if not {"teacher", "student", "values"} <= set(row):
            raise KdlabError(f"{path}: rows[{i}] needs teacher, student and values")
    return table


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def _lookup(recipe: dict, key: str):
    node = recipe
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _label(recipe: dict, key: str) -> str | None:
    value = _lookup(recipe, key)
    if key.endswith(".methods") and isinstance(value, dict):
        return " + ".join(sorted(set(value) - {"supervised"})) or "alone"
    return None if value is None else str(value)


def _measure(run: Run, stage: str, metric: str, scale: float) -> tuple[float, float | None, bool] | None:
    """(last, best, best from test history) of one run's stage, or None if it lacks the metric."""
    if metric not in run.metrics.get(stage, {}):
        return None
    pick = min if lower_is_better(metric) else max
    history = run.history(stage)
    test = [h[metric] for h in history if metric in h]
    if test:
        return scale * run.metrics[stage][metric], scale * pick(test), True
    val_key = metric.replace("test/", "val/", 1)
    val = [h[val_key] for h in history if val_key in h]
    return scale * run.metrics[stage][metric], (scale * pick(val) if val else None), False


def _cell(got: list[tuple[float, float | None, bool]], pub=None) -> str:
    if not got:
        return "-" + _pub(pub)
    best = [b for _, b, _ in got if b is not None]
    text = _mean_std([v for v, _, _ in got])
    if best:
        from_test = all(t for _, b, t in got if b is not None)
        text += f" / {_mean_std(best)}" if from_test else f" / [val {_mean_std(best)}]"
    return text + f" ({len(got)})" + _pub(pub)


def paper_table(runs: list[Run], *, rows: list[str], column: str, stage: str, metric: str,
                teacher_stage: str | None = None, published: dict | None = None, command: str | None = None) -> str:
    """The paper layout of ``runs`` (see the module docstring)."""
    scale = 100.0 if published is not None or metric.endswith("accuracy") else 1.0
    by_methods = {tuple(sorted(ms)): name for name, ms in (published or {}).get("columns", {}).items()}
    cells: dict[tuple[tuple[str, ...], str], list] = {}
    teachers: dict[tuple[str, ...], dict[str, tuple]] = {}
    for run in runs:
        got = _measure(run, stage, metric, scale)
        row = tuple(_label(run.recipe, k) for k in rows)
        label = _label(run.recipe, column)
        if got is None or None in row or label is None:
            continue
        if by_methods and column.endswith(".methods"):
            methods = tuple(sorted(set(_lookup(run.recipe, column) or {}) - {"supervised"}))
            label = by_methods.get(methods, label)
        cells.setdefault((row, label), []).append(got)
        if teacher_stage is not None:
            t = _measure(run, teacher_stage, metric, scale)
            if t is not None:  # one teacher per seed, shared by the pair's runs
                teachers.setdefault(row, {})[str(run.recipe.get("seed"))] = t
    if not cells:
        raise KdlabError(f"no run has a stage '{stage}' with {metric} and the recipe keys {', '.join([*rows, column])}")
    pub_rows = {(r["teacher"], r["student"]): r["values"] for r in (published or {}).get("rows", [])}
    pub_columns = list((published or {}).get("columns", {}))
    columns = pub_columns + sorted({c for _, c in cells} - set(pub_columns))
    keys = sorted({r for r, _ in cells}, key=lambda r: (r not in pub_rows, r))
    scaled = " x 100" if scale == 100 else ""
    source = f"; published: {published['source']}" if published else ""
    head = [" -> ".join(_heading(k) for k in rows)]
    head += ["teacher"] if teacher_stage is not None else []
    lines = [f"{metric}{scaled}, mean ± sample std over seeds: last epoch / best epoch (seeds); best = the best "
             f"test value over the epochs (eval_test), [val ...] where only the validation split was "
             f"evaluated per epoch{source}", "",
             "| " + " | ".join(head + columns) + " |", "|" + "---|" * (len(head) + len(columns))]
    for key in keys:
        pub = pub_rows.get(key, {})
        cells_of_row = [" -> ".join(key)]
        if teacher_stage is not None:
            cells_of_row.append(_cell(list(teachers.get(key, {}).values()), pub.get("teacher")))
        cells_of_row += [_cell(cells.get((key, c), []), pub.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells_of_row) + " |")
    if command:
        lines += ["", f"command: `{command}`"]
    return "\n".join(lines) + "\n"


def compare(runs: list[Run], table: dict, command: str | None = None) -> str:
    """The runs beside a published table: rows teacher -> student architecture, method columns."""
    t_stage, s_stage = table.get("teacher_stage", "teacher"), table.get("student_stage", "student")
    return paper_table(runs, rows=[f"stages.{t_stage}.model.arch", f"stages.{s_stage}.model.arch"],
                       column=f"stages.{s_stage}.methods", stage=s_stage, metric=table["metric"],
                       teacher_stage=t_stage, published=table, command=command)


def _heading(key: str) -> str:
    """``stages.teacher.model.arch`` -> ``teacher``; other keys as they are."""
    parts = key.split(".")
    return parts[1] if len(parts) == 4 and parts[0] == "stages" and parts[2:] == ["model", "arch"] else key


def _pub(value) -> str:
    return f"; pub. {value:.2f}" if isinstance(value, (int, float)) else ""
