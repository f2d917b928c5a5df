"""Training throughput of the dialogue recipe's models and of token-level KD with a live teacher
against the top-k teacher cache, in tokens per second of training steps (``train_tokens_per_s``
from the lm_metrics plugin: input tokens, padding included, over the wall time of the steps).

    python -m benchmarks.lm_throughput [--device cpu] [--epochs 2] [--repeats 3]

One process, every writer off; each configuration is a stage of one recipe trained ``epochs``
epochs on the generated corpus (2,000 dialogues); ``--repeats`` runs the recipe again and prints
each stage's median and the ratio to the transformer student trained alone measured in the same
repeat (median over repeats). ``student_kd_store`` reads the teacher's top-32 from the compact
store (``compact = true``, labelled in the first repeat, reused by the later ones: the teacher is
the same, trained from the same seed); its bytes per token and labelling speed are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import QUIET
from kdlab.data import dialogue_corpus
from kdlab.engine.runner import run

RECIPE = """
name = "lm_bench"
device = "{device}"
[data]
dataset = "text"
dir = "{corpus}"
seq_len = 176
batch_size = 16
""" + QUIET + """[plugins.lm_metrics]
dialogues = 1
candidates = 2
max_new_tokens = 1
[defaults]
epochs = {epochs}
eval_every = {epochs}
optimizer = {{ name = "adamw", lr = 0.003 }}
model = {{ arch = "transformer_lm", layers = 2, width = 64, heads = 4 }}
[stages.teacher]
model = {{ arch = "transformer_lm", layers = 4, width = 128, heads = 4 }}
methods.lm = {{}}
[stages.student_lm]
methods.lm = {{}}
[stages.student_kd_live]
teachers = ["teacher"]
methods.lm = {{}}
methods.token_kd = {{}}
[stages.student_kd_cached]
teachers = ["teacher"]
methods.lm = {{}}
methods.token_kd = {{}}
methods.teacher_cache = {{ topk = 32 }}
[stages.student_kd_store]
teachers = ["teacher"]
methods.lm = {{}}
methods.token_kd = {{}}
methods.teacher_cache = {{ topk = 32, dir = "{store}", compact = true }}
[stages.conv_lm]
model = {{ arch = "conv_lm", width = 128, layers = 4, receptive_field = 16 }}
methods.lm = {{}}
[stages.conv_kd_cached]
model = {{ arch = "conv_lm", width = 128, layers = 4, receptive_field = 16 }}
teachers = ["teacher"]
methods.lm = {{}}
methods.token_kd = {{}}
methods.teacher_cache = {{ topk = 32 }}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    speeds: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "dialogues"
        dialogue_corpus.generate(corpus, dialogues=2000, seed=0)
        recipe = Path(tmp) / "r.toml"
        recipe.write_text(RECIPE.format(device=args.device, corpus=corpus, epochs=args.epochs, store=Path(tmp) / "store"))
        for i in range(args.repeats):
            metrics = run(recipe, out=Path(tmp) / f"runs{i}").metrics
            base = metrics["student_lm"]["train_tokens_per_s"]
            for stage, m in metrics.items():
                speeds.setdefault(stage, []).append(m["train_tokens_per_s"])
                ratios.setdefault(stage, []).append(m["train_tokens_per_s"] / base)
            params = {stage: m["params"] for stage, m in metrics.items()}
            macs = {stage: m["macs_per_token"] for stage, m in metrics.items()}
        stores = [json.loads(p.read_text()) for p in sorted((Path(tmp) / "store").glob("compact-*/meta.json"))]
    print(f"device {args.device}, {args.epochs} epochs per stage, {args.repeats} repeats (median)")
    print("| stage | params | MACs/token | train tokens/s | / student_lm alone |")
    print("|---|---|---|---|---|")
    for stage in speeds:
        print(f"| {stage} | {params[stage]:,} | {macs[stage]:,.0f} | {statistics.median(speeds[stage]):,.0f} | "
              f"{statistics.median(ratios[stage]):.2f} |")
    for m in stores:
        print(f"compact store ({m['split']}): {m['row_bytes']} bytes a token, labelled at "
              f"{m['label_tokens_per_s']:,.0f} tokens/s (first repeat)")


if __name__ == "__main__":
    main()
