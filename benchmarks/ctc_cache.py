"""CTC posterior KD: epoch time with the teacher's posteriors cached vs the teacher run every step
(issue benchmark 4), beside the student trained alone with plain CTC.

    python -m benchmarks.ctc_cache --manifest data/ru_phonemes/manifest.jsonl \\
        --teacher runs/ru_phonemes_ctc_kd_wav2vec2/seed0/models/teacher.pt --epochs 1 3 --repeats 3

The teacher is any exported CTC model; BENCHMARKS.md's figures use a wav2vec2_ctc on raw audio
(the teacher of ru_phonemes_ctc_kd_wav2vec2.toml), the costlier teacher to run every step. The
student is the recipes' Conformer. Variants are interleaved, writers off, 1 torch thread by default; the time
is the whole stage (data already featurised), so the cached variants include building their
cache (one teacher pass over the training split) in the first epoch. Each variant runs for two
epoch counts: the difference gives the seconds per epoch once running, the rest is the stage's
fixed cost (the cache build, the final evaluations). Printed: medians, and the cached stage
against the student alone per epoch and over a stage of ``--stage-epochs`` (the recipe's 20).
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
    parser.add_argument("--epochs", type=int, nargs=2, default=[1, 3], metavar=("SHORT", "LONG"))
    parser.add_argument("--stage-epochs", type=int, default=20, help="the stage length the total ratio is for")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    short, long = args.epochs
    times: dict[tuple[str, int], list[float]] = {(k, e): [] for k in VARIANTS for e in (short, long)}
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (key, methods) in enumerate(VARIANTS.items()):
            for e in (short, long):
                paths[key, e] = Path(tmp) / f"{i}_{e}.toml"
                paths[key, e].write_text(RECIPE.format(quiet=QUIET, manifest=Path(args.manifest).resolve(), epochs=e,
                                                       methods=methods.format(teacher=Path(args.teacher).resolve())))
        run(paths["student alone (plain CTC)", short], out=tmp)  # warm-up: builds the feature cache
        for _ in range(args.repeats):
            for (key, e), path in paths.items():
                start = time.perf_counter()
                result = run(path, out=tmp).metrics["student"]["test/per"]
                times[key, e].append(time.perf_counter() - start)
                if e == long:
                    per[key] = result
    med = {k: statistics.median(v) for k, v in times.items()}
    epoch = {k: (med[k, long] - med[k, short]) / (long - short) for k in VARIANTS}
    fixed = {k: med[k, short] - short * epoch[k] for k in VARIANTS}
    stage = {k: fixed[k] + args.stage_epochs * epoch[k] for k in VARIANTS}
    alone = "student alone (plain CTC)"
    print(f"CTC KD, {short} and {long} epochs, median of {args.repeats}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"| variant | s ({short} ep) | s ({long} ep) | s per epoch | fixed s | / alone per epoch | "
          f"/ alone over {args.stage_epochs} epochs | test PER ({long} ep) |")
    print("|---|---|---|---|---|---|---|---|")
    for key in VARIANTS:
        print(f"| {key} | {med[key, short]:.1f} | {med[key, long]:.1f} | {epoch[key]:.2f} | {fixed[key]:.1f} | "
              f"{epoch[key] / epoch[alone]:.3f} | {stage[key] / stage[alone]:.3f} | {per[key]:.4f} |")


if __name__ == "__main__":
    main()
