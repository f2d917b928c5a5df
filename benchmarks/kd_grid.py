"""The grid used to choose the default recipe's KD settings: one fixed teacher file, students of
a given width and learning rate, trained alone and with logit KD at several (T, alpha), 3 seeds.

    python -m benchmarks.kd_grid TEACHER.pt --channels "4, 8" --lr 0.01

TEACHER.pt is an exported model, e.g. runs/digits_kd/<run>/models/teacher.pt from the default
recipe. Prints mean and spread of val and test accuracy per setting.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import textwrap
from pathlib import Path

from kdlab.engine.runner import run

RECIPE = """
name = "kd_grid"
device = "cpu"
[data]
dataset = "digits"
batch_size = 32
[plugins.tensorboard]
enabled = false
[plugins.checkpoint]
enabled = false
[plugins.progress]
enabled = false
[defaults]
epochs = 30
optimizer = {{ name = "adam", lr = {lr} }}
scheduler = {{ name = "cosine" }}
model = {{ arch = "cnn", channels = [{channels}] }}
[stages.alone]
methods.supervised = {{}}
"""
GRID = [(2, 0.5), (4, 0.5), (4, 0.9), (8, 0.7), (2, 0.9)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("teacher")
    parser.add_argument("--channels", default="4, 8")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    text = textwrap.dedent(RECIPE.format(lr=args.lr, channels=args.channels))
    for t, a in GRID:
        text += (f'\n[stages.kd_T{t}_a{int(a * 10)}]\nteachers = ["{Path(args.teacher).resolve()}"]\n'
                 f"methods.logit_kd = {{ temperature = {t}, alpha = {a} }}\n")
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as out:
        recipe = Path(out) / "grid.toml"
        recipe.write_text(text)
        for seed in args.seeds:
            for stage, m in run(recipe, out=out, overrides=[f"seed={seed}"]).metrics.items():
                results.setdefault(stage, []).append((m["val/accuracy"], m["test/accuracy"]))
    print(f"student [{args.channels}], lr {args.lr}, seeds {args.seeds}")
    print("| stage | val accuracy | test accuracy |\n|---|---|---|")
    for stage, values in results.items():
        val, test = [v for v, _ in values], [t for _, t in values]
        print(f"| {stage} | {100 * statistics.mean(val):.2f} +- {100 * statistics.stdev(val):.2f} "
              f"| {100 * statistics.mean(test):.2f} +- {100 * statistics.stdev(test):.2f} |")


if __name__ == "__main__":
    main()
