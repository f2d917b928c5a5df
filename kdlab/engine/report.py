"""Plain comparison tables (markdown or CSV): one row per stage, or per run and stage."""

from __future__ import annotations

import csv
import io

# Columns shown first, when present; any other metric follows in alphabetical order. The table
# printed after `kdlab run` shows only these (every metric is in the run's metrics.json).
PREFERRED = ["test/accuracy", "val/accuracy", "test/top5", "test/loss", "test/au_fa_fr", "val/au_fa_fr",
             "test/fp16_au_fa_fr", "test/per", "val/per", "test/beam_per", "test/sparsity",
             "test/geometry_preservation", "test/cka",
             "test/perplexity", "test/token_accuracy", "test/hits@1", "test/token_f1", "test/memory_recall",
             "macs_per_token", "train_tokens_per_s", "params", "nonzero_params", "macs", "bytes", "bytes_fp16",
             "latency_ms", "macs_ratio", "bytes_ratio", "bytes_fp16_ratio", "latency_ratio"]


def columns(rows: list[dict], with_run: bool, preferred_only: bool = False) -> list[str]:
    keys = {k for r in rows for k in r} - {"run", "stage"}
    ordered = [k for k in PREFERRED if k in keys] + ([] if preferred_only else sorted(keys - set(PREFERRED)))
    return (["run"] if with_run else []) + ["stage"] + ordered


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value) if value is not None else ""


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """The one markdown table writer (``kdlab run``'s table and ``kdlab report``'s)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def markdown(rows: list[dict], with_run: bool = True, preferred_only: bool = False) -> str:
    cols = columns(rows, with_run, preferred_only)
    return markdown_table(cols, [[_cell(r.get(c)) for c in cols] for r in rows])


def to_csv(rows: list[dict], with_run: bool = True) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows, with_run), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
