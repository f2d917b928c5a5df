"""Comparison tables over runs and stages (markdown or CSV)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from kdlab.engine.errors import KdlabError

# Columns shown first, when present; any other metric follows in alphabetical order.
PREFERRED = ["test/accuracy", "val/accuracy", "test/top5", "test/loss", "test/sparsity", "test/geometry_preservation",
             "test/cka", "params", "macs", "bytes", "latency_ms"]


def collect(run_dirs: list[str | Path]) -> list[dict]:
    rows = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "metrics.json"
        if not path.is_file():
            raise KdlabError(f"{run_dir}: no metrics.json (not a kdlab run directory, or no stage finished)")
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise KdlabError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        for stage, values in metrics.items():
            rows.append({"run": str(run_dir), "stage": stage, **values})
    return rows


def columns(rows: list[dict], with_run: bool) -> list[str]:
    keys = {k for r in rows for k in r} - {"run", "stage"}
    ordered = [k for k in PREFERRED if k in keys] + sorted(keys - set(PREFERRED))
    return (["run"] if with_run else []) + ["stage"] + ordered


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value) if value is not None else ""


def markdown(rows: list[dict], with_run: bool = True) -> str:
    cols = columns(rows, with_run)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict], with_run: bool = True) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows, with_run), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
