"""The table of recipes/dialogue_kd.toml over seeds: mean +- sample std of each stage's test
metrics across run directories (one per seed), and each method's difference to the student
trained alone, seed by seed.

    for s in 0 1 2; do kdlab run recipes/dialogue_kd.toml --out runs/bench --run-id seed$s --set seed=$s; done
    python -m benchmarks.dialogue_table runs/bench/dialogue_kd/seed0 runs/bench/dialogue_kd/seed1 runs/bench/dialogue_kd/seed2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COLUMNS = [("test/memory_recall", "memory recall"), ("test/hits@1", "hits@1"), ("test/token_f1", "token F1"),
           ("test/perplexity", "perplexity"), ("test/token_accuracy", "token accuracy")]


def cell(values: list[float], digits: int = 3) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="run directories (one per seed) holding metrics.json")
    parser.add_argument("--baseline", default="student_lm")
    parser.add_argument("--conv-baseline", default="conv_lm")
    args = parser.parse_args()
    runs = [json.loads((Path(r) / "metrics.json").read_text()) for r in args.runs]
    stages = [s for s in runs[0] if all(s in r for r in runs)]
    print(f"{len(runs)} seeds; mean +- sample std; the last column: memory recall minus the same seed's student "
          "trained alone (conv students: minus conv_lm), and in how many seeds it is higher\n")
    print("| stage | params | MACs/token | " + " | ".join(name for _, name in COLUMNS) + " | recall vs alone |")
    print("|---|---|---|" + "---|" * len(COLUMNS) + "---|")
    for stage in stages:
        row = [stage, f"{int(runs[0][stage]['params']):,}", f"{runs[0][stage]['macs_per_token']:,.0f}"]
        row += [cell([r[stage][key] for r in runs]) for key, _ in COLUMNS]
        base = args.conv_baseline if stage.startswith("conv") else args.baseline
        if stage not in (base, "teacher") and base in stages:
            deltas = [r[stage]["test/memory_recall"] - r[base]["test/memory_recall"] for r in runs]
            row.append(f"{statistics.mean(deltas):+.3f} ({sum(d > 0 for d in deltas)}/{len(deltas)})")
        else:
            row.append("")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
