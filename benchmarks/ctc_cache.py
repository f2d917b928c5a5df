"""CTC posterior KD: epoch time with the teacher's posteriors cached vs the teacher run every step
(issue benchmark 4), beside the student trained alone with plain CTC.

    python -m benchmarks.ctc_cache --manifest data/ru_phonemes/manifest.jsonl \\
        --teacher runs/ru_phonemes_ctc_kd/seed0/models/teacher.pt --epochs 2 --repeats 3

The teacher is an exported wav2vec2_ctc (the recipe's teacher stage); the student is the
recipe's Conformer. Variants are interleaved, writers off, 1 torch thread by default; the time
is the whole stage (data already featurised), so the cached variant includes building its cache
in the first epoch. Printed: median seconds per variant and ratios.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import QUIET
from kdlab.engine.runner import run

RECIPE = """
name = "ctc_bench"
device = "cpu"
[data]
dataset = "phonemes"
manifest = "{manifest}"
batch_size = 16
{quiet}[stages.student]
epochs = {epochs}
eval_every = {epochs}
model = {{ arch = "conformer_ctc", dim = 64, layers = 2, heads = 4, ffn = 128, subsample_channels = 16 }}
optimizer = {{ name = "adamw", lr = 0.002 }}
{methods}
"""

VARIANTS = {
    "student alone (plain CTC)": "methods.ctc = {{}}",
    "posterior KD, teacher every step": 'teachers = ["{teacher}"]\nmethods.ctc_kd = {{ strategy = "posterior" }}',
    "posterior KD, cached posteriors": 'teachers = ["{teacher}"]\nmethods.ctc_kd = {{ strategy = "posterior" }}\n'
                                       "methods.teacher_cache = {{}}",
    "posterior KD, cached top-4 (fp16)": 'teachers = ["{teacher}"]\nmethods.ctc_kd = {{ strategy = "posterior" }}\n'
                                         "methods.teacher_cache = {{ topk = 4 }}",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (key, methods) in enumerate(VARIANTS.items()):
            paths[key] = Path(tmp) / f"{i}.toml"
            paths[key].write_text(RECIPE.format(quiet=QUIET, manifest=Path(args.manifest).resolve(), epochs=args.epochs,
                                                methods=methods.format(teacher=Path(args.teacher).resolve())))
        run(paths["student alone (plain CTC)"], out=tmp)  # warm-up: builds the feature cache
        for _ in range(args.repeats):
            for key, path in paths.items():
                start = time.perf_counter()
                per[key] = run(path, out=tmp).metrics["student"]["test/per"]
                times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    cached = med["posterior KD, cached posteriors"]
    print(f"CTC KD, {args.epochs} epochs, median of {args.repeats}, {args.threads} thread(s), torch {torch.__version__}")
    print("| variant | median s | s per epoch | cached / this | test PER |")
    print("|---|---|---|---|---|")
    for key in VARIANTS:
        print(f"| {key} | {med[key]:.1f} | {med[key] / args.epochs:.1f} | {cached / med[key]:.3f} | {per[key]:.4f} |")


if __name__ == "__main__":
    main()
