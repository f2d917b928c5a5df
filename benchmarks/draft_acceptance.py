"""Draft models for speculative decoding on real text (issue #30 item 5): how often a small
student's proposals are accepted by its teacher (the target), trained alone against distilled.

    python -m benchmarks.draft_acceptance [--source /usr/share/vim/vim90/doc] [--seeds 0 1 2]
                                          [--epochs 5] [--teacher-epochs 8] [--work DIR]

The corpus, the teacher (transformer, 4 layers, width 128, trained once, seed 0) and the students
(transformer, 2 layers, width 48) are those of benchmarks/lm_topk.py (the Vim documentation of
Debian's vim-runtime; BPE 2,000). Per seed, one recipe trains three students from the same
initial weights: ``lm`` alone; ``lm + token_kd`` forward KL; ``lm + token_kd`` reverse KL (both
from the teacher's full distribution, cached once: exact). Every stage lists the teacher and
carries ``draft_acceptance``, which adds no loss term: the student alone is measured the same way
(its teacher does not run in its training). Figures on the test split, mean +- sample std over the
seeds: ``acceptance`` (speculative sampling at temperature 1: the mean of sum_x min(p, q)),
``acceptance_greedy`` (argmax agreement), ``tokens_per_call`` at 4 drafted tokens, and the test
perplexity.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.lm_topk import COMMON, STUDENT, TEACHER, corpus, run_recipe

VARIANTS = {
    "alone": "",
    "forward_kl": 'methods.token_kd = {{ divergence = "forward_kl" }}\n',
    "reverse_kl": 'methods.token_kd = {{ divergence = "reverse_kl" }}\n',
}
METRICS = ("test/acceptance", "test/acceptance_greedy", "test/tokens_per_call", "test/perplexity")


def students(seed: int, data: Path, teacher: Path, cache: Path, epochs: int) -> str:
    text = f'name = "draft_students"\n{COMMON.format(seed=seed, corpus=data)}'
    for name, kd in VARIANTS.items():
        text += STUDENT.format(name=name, epochs=epochs)
        text += f'teachers = ["{teacher}"]\nmethods.draft_acceptance = {{ gamma = 4 }}\n' + kd.format()
        if kd:
            text += f'methods.teacher_cache = {{ dir = "{cache}", max_gb = 8.0 }}\n'
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=Path("/usr/share/vim/vim90/doc"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-chars", type=int, default=600_000)
    parser.add_argument("--eval-chars", type=int, default=150_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--work", type=Path, help="keep the corpus, teacher and cache here (default: a temporary dir)")
    args = parser.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"{args.source}: not a directory (install Debian's vim-runtime, or pass --source)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        data = corpus(args.source, work / "corpus", args.train_chars, args.eval_chars)
        teacher_run = run_recipe(work / "teacher.toml", TEACHER.format(
            common=COMMON.format(seed=0, corpus=data), epochs=args.teacher_epochs), work / "runs")
        teacher = teacher_run.run_dir / "models" / "teacher.pt"
        t = teacher_run.metrics["teacher"]
        print(f"teacher: {int(t['params']):,} parameters, test perplexity {t['test/perplexity']:.1f}", flush=True)
        results = {}
        for seed in args.seeds:
            results[seed] = run_recipe(work / f"draft{seed}.toml", students(seed, data, teacher, work / "cache",
                                                                            args.epochs), work / "runs").metrics
            print(f"seed {seed}: " + "; ".join(f"{s} acceptance {m['test/acceptance']:.4f}, greedy "
                                               f"{m['test/acceptance_greedy']:.4f}, ppl {m['test/perplexity']:.1f}"
                                               for s, m in results[seed].items()), flush=True)
    first = results[args.seeds[0]]["alone"]
    print(f"\nteacher {int(t['params']):,} parameters (test perplexity {t['test/perplexity']:.1f}); drafts "
          f"{int(first['params']):,} parameters; {len(args.seeds)} seeds; corpus {args.source}")
    print("| draft | acceptance (sampling) | acceptance (greedy) | tokens per target call (4 drafted) | "
          "test perplexity | acceptance above alone |")
    print("|---|---|---|---|---|---|")
    for name in VARIANTS:
        cells = []
        for key in METRICS:
            xs = [results[s][name][key] for s in args.seeds]
            std = statistics.stdev(xs) if len(xs) > 1 else float("nan")
            cells.append(f"{statistics.mean(xs):.4f} +- {std:.4f}" if key != "test/perplexity"
                         else f"{statistics.mean(xs):.1f} +- {std:.1f}")
        wins = sum(results[s][name]["test/acceptance"] > results[s]["alone"]["test/acceptance"] for s in args.seeds)
        print(f"| {name} | " + " | ".join(cells) + f" | {'' if name == 'alone' else f'{wins}/{len(args.seeds)}'} |")


if __name__ == "__main__":
    main()
