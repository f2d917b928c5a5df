"""Reports over runs: runs that differ only by seed are one group; each group's stages get the
mean and spread of their final metrics, the best and the last value of the monitored metric, and
the number of seeds. Groups are labelled by the recipe keys that differ between them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
import tomllib
from pathlib import Path
from typing import Any

import attrs

from kdlab.engine.errors import KdlabError
from kdlab.engine.report import markdown_table

log = logging.getLogger("kdlab")

# Final metrics shown, when present, in this order.
SHOWN = ["test/accuracy", "test/top5", "test/au_fa_fr", "test/fp16_au_fa_fr", "test/per", "test/beam_per",
         "test/geometry_preservation", "test/cka", "test/sparsity", "params", "nonzero_params", "macs", "bytes",
         "bytes_fp16", "macs_ratio", "bytes_ratio", "bytes_fp16_ratio"]


@attrs.frozen
class Run:
    run_dir: Path
    recipe: dict
    metrics: dict[str, dict[str, float]]

    def history(self, stage: str) -> list[dict]:
        path = self.run_dir / "history" / f"{stage}.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x] if path.is_file() else []


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Run directories given directly, or found below the given directories (a sweep's)."""
    runs = []
    for path in map(Path, paths):
        dirs = [path] if (path / "metrics.json").is_file() else sorted(p.parent for p in path.rglob("metrics.json"))
        if not dirs:
            raise KdlabError(f"{path}: no metrics.json here or below (not a kdlab run directory, or no stage finished)")
        for d in dirs:
            try:
                metrics = json.loads((d / "metrics.json").read_text())
                recipe = tomllib.loads((d / "recipe.toml").read_text()) if (d / "recipe.toml").is_file() else {}
            except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
                raise KdlabError(f"{d}: unreadable run files ({exc})") from exc
            runs.append(Run(d, recipe, metrics))
    return runs


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


@attrs.frozen
class Group:
    label: str
    runs: list[Run]


def group_by_seed(runs: list[Run]) -> list[Group]:
    """Runs whose resolved recipes are equal but for the seed form one group."""
    keyed: dict[str, list[Run]] = {}
    flat = {}
    for r in runs:
        f = {k: v for k, v in _flatten(r.recipe).items() if k != "seed"}
        key = json.dumps(f, sort_keys=True, default=str)
        keyed.setdefault(key, []).append(r)
        flat[key] = f
    keys = list(keyed)
    varying = sorted({k for f in flat.values() for k in f if len({str(flat[g].get(k)) for g in keys}) > 1})
    # label with the shortest key suffixes that stay unique: `channels` for stages.student.model.channels
    short = {}
    for k in varying:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(1 for other in varying if other == tail or other.endswith("." + tail)) == 1:
                short[k] = tail
                break
    groups = []
    for key in keys:
        label = ", ".join(f"{short[k]}={_plain(flat[key].get(k))}" for k in varying)
        groups.append(Group(label or keyed[key][0].recipe.get("name", "runs"), _one_per_seed(keyed[key])))
    return groups


def _one_per_seed(runs: list[Run]) -> list[Run]:
    """Two runs of the same recipe and seed are one measurement, not two seeds: keep the last
    (run directories sort by their start time) and say so."""
    by_seed: dict[Any, Run] = {}
    for r in runs:
        seed = r.recipe.get("seed", 0)
        if seed in by_seed:
            log.warning("report: %s and %s ran the same recipe with seed %s; counting only %s",
                        by_seed[seed].run_dir, r.run_dir, seed, r.run_dir)
        by_seed[seed] = r
    return list(by_seed.values())


def _plain(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _monitor(run: Run, stage: str) -> tuple[str, str]:
    table = run.recipe.get("stages", {}).get(stage, {})
    return table.get("monitor") or "val/accuracy", table.get("monitor_mode", "max")


def aggregate(groups: list[Group], extra: tuple[str, ...] = ()) -> list[dict]:
    """One row per (group, stage): ``{metric: [values over seeds]}`` for the metrics in SHOWN
    and ``extra``, plus best/last of the monitor."""
    shown = SHOWN + [k for k in extra if k not in SHOWN]
    rows = []
    for group in groups:
        stages = list(dict.fromkeys(s for r in group.runs for s in r.metrics))
        for stage in stages:
            runs = [r for r in group.runs if stage in r.metrics]
            row: dict[str, Any] = {"group": group.label, "stage": stage, "seeds": len(runs), "values": {}}
            for key in shown:
                vals = [r.metrics[stage][key] for r in runs if key in r.metrics[stage]]
                if vals:
                    row["values"][key] = vals
            monitor, mode = _monitor(runs[0], stage)
            best, best_epoch, last = [], [], []
            for r in runs:
                hist = [h for h in r.history(stage) if monitor in h]
                if hist:
                    pick = (max if mode == "max" else min)(hist, key=lambda h: h[monitor])
                    best.append(pick[monitor])
                    best_epoch.append(pick["epoch"])
                    last.append(hist[-1][monitor])
            if best:
                row["values"][f"best {monitor}"] = best
                row["values"]["best epoch"] = best_epoch
                row["values"][f"last {monitor}"] = last
            rows.append(row)
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (n - 1): the seeds are a sample of all seeds."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(key: str, values: list[float]) -> str:
    m, s = mean_std(values)
    if key in ("params", "nonzero_params", "macs", "bytes", "bytes_fp16") and s == 0:
        return f"{m:,.0f}"
    if key == "best epoch":  # epochs are whole numbers; a mean over seeds is not
        return f"{int(m)}" if len(values) == 1 else f"{m:.1f} ± {s:.1f}"
    if 0 < abs(m) < 0.01:  # small error rates (au_fa_fr): keep significant digits
        return f"{m:.3e} ± {s:.1e}" if len(values) > 1 else f"{m:.3e}"
    return f"{m:.4f} ± {s:.4f}" if len(values) > 1 else f"{m:.4f}"


def columns(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r["values"]))
    return [k for k in SHOWN if k in keys] + [k for k in keys if k not in SHOWN]


def markdown(rows: list[dict], pareto: dict[int, list[str]] | None = None) -> str:
    cols = columns(rows)
    head = ["group", "stage", "seeds", *cols] + (["pareto"] if pareto is not None else [])
    body = []
    for i, r in enumerate(rows):
        cells = [r["group"], r["stage"], str(r["seeds"])] + [_fmt(c, r["values"][c]) if c in r["values"] else "" for c in cols]
        if pareto is not None:
            cells.append(", ".join(pareto.get(i, [])))
        body.append(cells)
    return markdown_table(head, body)


def to_csv(rows: list[dict]) -> str:
    cols = columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["group", "stage", "seeds"] + [f"{c} {s}" for c in cols for s in ("mean", "std")])
    for r in rows:
        cells = []
        for c in cols:
            cells += list(mean_std(r["values"][c])) if c in r["values"] else ["", ""]
        writer.writerow([r["group"], r["stage"], r["seeds"], *cells])
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when lower cost (first) and higher metric (second) are
    better: no other point is at least as good in both and better in one."""
    front = []
    for i, (c, m) in enumerate(points):
        dominated = any(c2 <= c and m2 >= m and (c2 < c or m2 > m) for j, (c2, m2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


LOWER_IS_BETTER = ("loss", "per", "au_fa_fr", "au_fa_fr_class")


def lower_is_better(metric: str) -> bool:
    """Error-like metrics (loss, PER, au_fa_fr, also as fp16_/beam_ variants)."""
    name = metric.rsplit("/", 1)[-1]
    return any(name == m or name.endswith(f"_{m}") for m in LOWER_IS_BETTER)


def pareto_marks(rows: list[dict], metric: str, costs: list[str], stages: set[str] | None) -> dict[int, list[str]]:
    """Row index -> the costs against which the row is Pareto-optimal for ``metric``."""
    marks: dict[int, list[str]] = {}
    sign = -1.0 if lower_is_better(metric) else 1.0
    for cost in costs:
        idx = [i for i, r in enumerate(rows) if metric in r["values"] and cost in r["values"]
               and (stages is None or r["stage"] in stages)]
        points = [(mean_std(rows[i]["values"][cost])[0], sign * mean_std(rows[i]["values"][metric])[0]) for i in idx]
        for k in pareto_front(points):
            marks.setdefault(idx[k], []).append(cost)
    return marks
