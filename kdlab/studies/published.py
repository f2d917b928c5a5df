"""Runs beside a published table: ``kdlab report RUN_DIR --published FILE``.

FILE (TOML) names its source, the metric, the teacher and student stages, the published columns
with the methods that make each (the student stage's methods, ``supervised`` aside), and one row
per teacher -> student pair with the published values (see ``docs/published/cifar100.toml``).
The runs are grouped by (teacher arch, student arch, methods); each group's cell is the mean +-
std over its seeds of the final metric (the last epoch), with the mean of the best validation
value over epochs beside it, and the published value. Groups whose methods no published column
names get columns of their own, with no published value.
"""

from __future__ import annotations

import statistics
import tomllib
from pathlib import Path

from kdlab.engine.errors import KdlabError
from kdlab.studies.aggregate import Run


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


def compare(runs: list[Run], table: dict) -> str:
    metric, t_stage, s_stage = table["metric"], table.get("teacher_stage", "teacher"), table.get("student_stage", "student")
    val = metric.replace("test/", "val/", 1)
    by_methods = {tuple(sorted(ms)): name for name, ms in table["columns"].items()}
    cells: dict[tuple[str, str, str], list[tuple[float, float | None]]] = {}
    teachers: dict[tuple[str, str], dict[str, float]] = {}
    for run in runs:
        stages = run.recipe.get("stages", {})
        if t_stage not in stages or s_stage not in stages or s_stage not in run.metrics or metric not in run.metrics[s_stage]:
            continue
        pair = (stages[t_stage]["model"]["arch"], stages[s_stage]["model"]["arch"])
        methods = tuple(sorted(set(stages[s_stage].get("methods", {})) - {"supervised"}))
        column = by_methods.get(methods, " + ".join(methods))
        best = [h[val] for h in run.history(s_stage) if val in h]
        cells.setdefault((*pair, column), []).append((100 * run.metrics[s_stage][metric], 100 * max(best) if best else None))
        if metric in run.metrics.get(t_stage, {}):  # one teacher per seed, shared by the pair's runs
            teachers.setdefault(pair, {})[str(run.recipe.get("seed"))] = 100 * run.metrics[t_stage][metric]
    if not cells:
        raise KdlabError(f"no run has stages '{t_stage}' and '{s_stage}' with {metric}")
    published = {(r["teacher"], r["student"]): r["values"] for r in table["rows"]}
    columns = list(table["columns"]) + sorted({c for _, _, c in cells} - set(table["columns"]))
    pairs = sorted({(t, s) for t, s, _ in cells}, key=lambda p: (p not in published, p))
    lines = [f"{metric} x 100 on the last epoch, mean ± std over seeds (n); [best {val} over epochs]; "
             f"published: {table['source']}", "",
             "| teacher -> student | teacher | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for pair in pairs:
        pub = published.get(pair, {})
        t = list(teachers.get(pair, {}).values())
        row = [f"{pair[0]} -> {pair[1]}", (f"{_mean_std(t)} ({len(t)})" if t else "-") + _pub(pub.get("teacher"))]
        for column in columns:
            got = cells.get((*pair, column))
            if not got:
                row.append("-" + _pub(pub.get(column)))
                continue
            best = [b for _, b in got if b is not None]
            text = f"{_mean_std([v for v, _ in got])} ({len(got)})" + (f" [{statistics.fmean(best):.2f}]" if best else "")
            row.append(text + _pub(pub.get(column)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _pub(value) -> str:
    return f"; pub. {value:.2f}" if isinstance(value, (int, float)) else ""
