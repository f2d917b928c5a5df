"""Sparse teacher targets on real text: a transformer student trained alone, distilled from the
teacher's full next-token distribution, and from its top k (k = 8, 32, 128) plus the tail
bucket, with forward and reverse KL, over seeds.

    python -m benchmarks.lm_topk [--source /usr/share/vim/vim90/doc] [--seeds 0 1 2]
                                 [--train-chars 600000] [--eval-chars 150000] [--epochs 5] [--teacher-epochs 8]

Corpus: the Vim documentation as Debian's ``vim-runtime`` package installs it (English prose
and examples, written by people; the Vim licence allows using and redistributing it), every
``*.txt`` file of ``--source`` in name order, cut into paragraphs (blank-line separated, each
joined into one line: a document of the plain-text data set); a paragraph goes to val or test
by a CRC-32 of its text (1 in 20 each), the rest to train; the first ``--train-chars``
characters of train and ``--eval-chars`` of val and of test are kept. No code here generated any of it.

One teacher (transformer, 4 layers, width 128) is trained once (seed 0) and exported; each seed
then trains the students (transformer, 2 layers, width 48) in one recipe that reads the exported
teacher: ``lm`` alone; ``lm + token_kd`` from a full-distribution cache (exact: the same as the
live teacher, tests/infra/test_teacher_cache.py); and from ``teacher_cache = { topk = k }``
with the tail bucket (the default ``topk_target``). The cache's kept mass is the stage metric
``teacher_cache/train_topk_mass``. Figures: test perplexity, mean +- sample std over the seeds,
and on how many seeds a student beats the student alone of the same seed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import zlib
from pathlib import Path

from kdlab.engine.runner import run

KS = (8, 32, 128)

COMMON = """
seed = {seed}
device = "cpu"
[data]
dataset = "text"
dir = "{corpus}"
vocab_size = 2000
seq_len = 128
batch_size = 32
eval_batch_size = 64
[plugins.checkpoint]
enabled = false
[plugins.tensorboard]
enabled = false
[defaults]
optimizer = {{ name = "adamw", lr = 0.003, weight_decay = 0.01 }}
scheduler = {{ name = "cosine", warmup_epochs = 1 }}
monitor = "val/perplexity"
monitor_mode = "min"
"""

TEACHER = """
name = "lm_topk_teacher"
{common}
[stages.teacher]
epochs = {epochs}
model = {{ arch = "transformer_lm", layers = 4, width = 128, heads = 4 }}
methods.lm = {{}}
"""

STUDENT = """
[stages.{name}]
epochs = {epochs}
model = {{ arch = "transformer_lm", layers = 2, width = 48, heads = 4 }}
methods.lm = {{}}
"""


def corpus(source: Path, out: Path, train_chars: int, eval_chars: int) -> Path:
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for path in sorted(source.glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for block in text.split("\n\n"):
            para = " ".join(block.split())
            if len(para) < 40:
                continue
            h = zlib.crc32(para.encode()) % 20
            splits["val" if h == 0 else "test" if h == 1 else "train"].append(para)
    for name, limit in (("train", train_chars), ("val", eval_chars), ("test", eval_chars)):
        kept, size = [], 0
        for para in splits[name]:
            if size >= limit:
                break
            kept.append(para)
            size += len(para) + 1
        splits[name] = kept
    out.mkdir(parents=True, exist_ok=True)
    for name, paras in splits.items():
        (out / f"{name}.txt").write_text("\n".join(paras) + "\n", encoding="utf-8")
        print(f"{name}: {len(paras):,} paragraphs, {sum(map(len, paras)):,} characters", flush=True)
    return out


def student_recipe(seed: int, data: Path, teacher: Path, cache: Path, epochs: int) -> str:
    text = f'name = "lm_topk_students"\n{COMMON.format(seed=seed, corpus=data)}'
    text += STUDENT.format(name="alone", epochs=epochs)

    def kd(div: str, topk: str = "") -> str:
        return (f'teachers = ["{teacher}"]\nmethods.token_kd = {{ divergence = "{div}" }}\n'
                f'methods.teacher_cache = {{ dir = "{cache}", max_gb = 8.0{topk} }}\n')

    text += STUDENT.format(name="full_forward_kl", epochs=epochs) + kd("forward_kl")
    for k in KS:
        for div in ("forward_kl", "reverse_kl"):
            text += STUDENT.format(name=f"top{k}_{div}", epochs=epochs) + kd(div, f", topk = {k}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=Path("/usr/share/vim/vim90/doc"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-chars", type=int, default=600_000)
    parser.add_argument("--eval-chars", type=int, default=150_000, help="characters of val and of test kept")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--work", type=Path, help="keep the corpus, teacher and caches here (default: a temporary dir)")
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
        results: dict[int, dict[str, dict[str, float]]] = {}
        for seed in args.seeds:
            text = student_recipe(seed, data, teacher, work / "cache", args.epochs)
            results[seed] = run_recipe(work / f"students{seed}.toml", text, work / "runs").metrics
            print(f"seed {seed}: " + ", ".join(f"{s} {m['test/perplexity']:.1f}" for s, m in results[seed].items()),
                  flush=True)
    stages = list(results[args.seeds[0]])
    first = results[args.seeds[0]]["alone"]
    print(f"\nteacher {int(t['params']):,} parameters, test perplexity {t['test/perplexity']:.1f}; students "
          f"{int(first['params']):,} parameters; {len(args.seeds)} seeds; corpus {args.source}")
    print("| student | test perplexity (mean +- sample std) | better than alone | top-k mass kept (mean, least) |")
    print("|---|---|---|---|")
    for stage in stages:
        ppl = [results[s][stage]["test/perplexity"] for s in args.seeds]
        wins = sum(results[s][stage]["test/perplexity"] < results[s]["alone"]["test/perplexity"] for s in args.seeds)
        std = statistics.stdev(ppl) if len(ppl) > 1 else float("nan")
        m = results[args.seeds[0]][stage]
        mass = (f"{m['teacher_cache/train_topk_mass']:.3f}, {m['teacher_cache/train_topk_mass_min']:.3f}"
                if "teacher_cache/train_topk_mass" in m else "")
        versus = "" if stage == "alone" else f"{wins}/{len(args.seeds)}"
        print(f"| {stage} | {statistics.mean(ppl):.1f} +- {std:.1f} | {versus} | {mass} |")


def run_recipe(path: Path, text: str, out: Path):
    path.write_text(text)
    return run(path, out=out)


if __name__ == "__main__":
    main()
