"""Plain comparison tables (markdown or CSV): one row per stage, or per run and stage."""

from __future__ import annotations

import csv
import io

# Columns shown first, when present; any other metric follows in alphabetical order.
PREFERRED = ["test/accuracy", "val/accuracy", "test/top5", "test/loss", "test/sparsity", "test/geometry_preservation",
             "test/cka", "params", "nonzero_params", "macs", "bytes", "latency_ms"]


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
