"""Quality over seeds: run a recipe once per seed and print mean +- std of each stage's metrics.

    python -m benchmarks.seeds recipes/digits_kd.toml --seeds 0 1 2

Each seed is a full `kdlab run` (teacher included) with `--set seed=N`; the seed sets model
initialisation and shuffling (the data split is fixed by `data.split_seed`). Prints a markdown
table, and for every stage the difference to the first stage named by --baseline.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from kdlab.engine.runner import run

METRICS = ["test/accuracy", "val/accuracy", "params", "macs", "test/geometry_preservation", "test/cka"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline", default="student_baseline", help="stage the others are compared with")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    per_stage: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            overrides = [*args.overrides, f"seed={seed}", "plugins.progress.enabled=false",
                         "plugins.tensorboard.enabled=false"]
            result = run(args.recipe, overrides=overrides, out=out)
            for stage, metrics in result.metrics.items():
                for key in (k for k in METRICS if k in metrics):
                    per_stage.setdefault(stage, {}).setdefault(key, []).append(metrics[key])
            print(f"seed {seed}: " + ", ".join(f"{s} {m['test/accuracy']:.4f}" for s, m in result.metrics.items()),
                  flush=True)
    elapsed = time.perf_counter() - start

    print(f"\n{args.recipe}, seeds {args.seeds}, {elapsed / len(args.seeds):.0f} s per run\n")
    print("| stage | test accuracy (mean +- std) | val accuracy | geometry preservation (test) | CKA (test) "
          "| params | MACs | vs baseline (test) |")
    print("|---|---|---|---|---|---|---|---|")
    base = per_stage.get(args.baseline, {}).get("test/accuracy")
    for stage, m in per_stage.items():
        test, val = m["test/accuracy"], m["val/accuracy"]
        diff = ""
        if base and stage != args.baseline:
            deltas = [a - b for a, b in zip(test, base)]
            diff = f"{100 * statistics.mean(deltas):+.2f} pts (wins {sum(d > 0 for d in deltas)}/{len(deltas)})"
        rep = [f"{statistics.mean(m[k]):.3f} +- {statistics.stdev(m[k]):.3f}" if k in m else ""
               for k in ("test/geometry_preservation", "test/cka")]
        print(f"| {stage} | {100 * statistics.mean(test):.2f} +- {100 * statistics.stdev(test):.2f} "
              f"| {100 * statistics.mean(val):.2f} +- {100 * statistics.stdev(val):.2f} | {rep[0]} | {rep[1]} "
              f"| {int(m['params'][0])} | {int(m['macs'][0])} | {diff} |")


if __name__ == "__main__":
    main()
