"""Vocabulary losses in chunks (kdlab.methods.vocab_chunks) against the same losses over whole
logits, at a real LLM vocabulary (151,936, Qwen2's), on small hidden sizes so that it runs on a CPU.

    python -m benchmarks.vocab_chunks [--repeats 3] [--run-steps 20] [--baseline-rev REV] [--only step|run|chunks]

Three measurements, every variant in its own process (its peak resident memory, ``ru_maxrss``, is
that process's), the variants interleaved ``--repeats`` times and reported as medians:

* ``step``: one training step (teacher forward, student forward, loss, backward, AdamW) of a
  ConvLM student (width 128) distilled from a ConvLM teacher (width 256), 16 x 256 = 4,096 target
  tokens, token_kd (forward KL) alone and lm + token_kd; ``whole``: the models return logits
  (what every release before the chunked losses did), ``chunked``: they return their hidden
  states and the losses take 32 MiB of logits at a time (:data:`~kdlab.methods.vocab_chunks.CHUNK_BYTES`),
  both terms in one pass, as the training loop runs them. Time: the median of 3 steps after one
  warm-up step.
* ``run``: ``kdlab run`` of a recipe, a transformer student (width 128) distilled live from a
  transformer teacher (width 256, a stage of zero epochs), lm + token_kd, 8 x 256 tokens a step,
  ``--run-steps`` steps, with this checkout against the code at ``--baseline-rev`` (default: the
  commit before the chunked losses), both on the same generated corpus (kdlab.data.word_corpus).
  tokens/s is the lm_metrics plugin's ``train_tokens_per_s``.
* ``chunks`` (only with ``--only chunks``): the lm + token_kd step of the ``run`` models
  (8 x 256 tokens) at chunks of 16, 32, 64 and 128 MiB, the choice of ``CHUNK_BYTES``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import peak_of

VOCAB = 151_936
ROOT = Path(__file__).resolve().parent.parent

STEP = r"""
import json, resource, statistics, sys, time
import torch
from kdlab import ModelOutput
from kdlab.engine.types import DataBundle
from kdlab.methods.lm import lm_loss
from kdlab.methods.token_kd import token_kd_term
from kdlab.methods.vocab_chunks import RowsTerm
from kdlab.models import conv_lm

variant, terms, vocab = sys.argv[1], sys.argv[2], int(sys.argv[3])
batch, length = 16, 256
data = DataBundle(train=None, val=None, test=None, num_classes=vocab, input_shape=(length,))
torch.manual_seed(0)
student = conv_lm.build(conv_lm.ConvLMConfig(width=128, layers=2, receptive_field=5, dropout=0.0), data)
teacher = conv_lm.build(conv_lm.ConvLMConfig(width=256, layers=2, receptive_field=5, dropout=0.0), data).train(False)
opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
x = torch.randint(4, vocab, (batch, length))
y = torch.randint(4, vocab, (batch, length))
mask = y >= 0
head = variant == "whole"
times = []
for step in range(4):
    start = time.perf_counter()
    with torch.no_grad():
        t_out = ModelOutput(logits=teacher(x, head=head))
    s_out = ModelOutput(logits=student(x, head=head))
    deferred = [token_kd_term(s_out, [t_out], mask, defer=True)]
    if terms == "lm+kd":
        deferred.append(lm_loss(s_out, y, defer=True))
    loss, _ = RowsTerm.evaluate(deferred, [1.0] * len(deferred))  # what the loop does: one pass for both
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    del s_out, t_out, loss
    times.append(time.perf_counter() - start)
print(json.dumps({"step_s": statistics.median(times[1:]), "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

CHUNKS = r"""
import json, statistics, sys, time
import torch
import kdlab.methods.vocab_chunks as vc
from kdlab import ModelOutput
from kdlab.engine.types import DataBundle
from kdlab.methods.lm import lm_loss
from kdlab.methods.token_kd import token_kd_term
from kdlab.models import transformer_lm as tl

vc.CHUNK_BYTES = int(sys.argv[1]) << 20
vocab, batch, length = int(sys.argv[2]), 8, 256
data = DataBundle(train=None, val=None, test=None, num_classes=vocab, input_shape=(length,))
torch.manual_seed(0)
student = tl.build(tl.TransformerLMConfig(layers=2, width=128, heads=4), data)
teacher = tl.build(tl.TransformerLMConfig(layers=2, width=256, heads=4), data).train(False)
opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
x, y = torch.randint(4, vocab, (batch, length)), torch.randint(4, vocab, (batch, length))
times = []
for step in range(4):
    start = time.perf_counter()
    with torch.no_grad():
        t_out = ModelOutput(logits=teacher(x, head=False))
    s_out = ModelOutput(logits=student(x, head=False))
    terms = [token_kd_term(s_out, [t_out], y >= 0, defer=True), lm_loss(s_out, y, defer=True)]
    loss, _ = vc.RowsTerm.evaluate(terms, [1.0, 1.0])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
print(json.dumps({"step_s": statistics.median(times[1:])}))
"""

RUN = r"""
import json, logging, sys
from pathlib import Path
from kdlab.engine.runner import run
logging.basicConfig(level=logging.WARNING)
m = run(Path(sys.argv[1]), out=Path(sys.argv[2])).metrics["student"]
print(json.dumps({"tokens_s": m["train_tokens_per_s"], "perplexity": m.get("test/perplexity")}))
"""

RECIPE = """
name = "vocab_run"
seed = 0
device = "cpu"
[data]
dataset = "text"
dir = "{corpus}"
tokenizer = "{corpus}/tokenizer.json"
seq_len = 256
batch_size = 8
eval_batch_size = 8
train_limit = {sequences}  # one epoch of exactly the steps asked for (both revisions time whole epochs)
[plugins.progress]
enabled = false
[plugins.tensorboard]
enabled = false
[plugins.checkpoint]
enabled = false
[plugins.lm_metrics]
dialogues = 1
candidates = 2
max_new_tokens = 1
[stages.teacher]
epochs = 0
model = {{ arch = "transformer_lm", layers = 2, width = 256, heads = 4 }}
optimizer = {{ name = "adamw", lr = 0.001 }}
methods.lm = {{}}
[stages.student]
epochs = 1
model = {{ arch = "transformer_lm", layers = 2, width = 128, heads = 4 }}
optimizer = {{ name = "adamw", lr = 0.001 }}
teachers = ["teacher"]
methods.lm = {{}}
methods.token_kd = {{}}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-steps", type=int, default=20)
    parser.add_argument("--baseline-rev", default="b36dc9c")
    parser.add_argument("--only", choices=("step", "run", "chunks"), help="run one of the measurements")
    args = parser.parse_args()
    if args.only == "chunks":
        return chunk_table(args.repeats)
    if args.only != "run":
        step_table(args.repeats)
    if args.only != "step":
        run_table(args.repeats, args.run_steps, args.baseline_rev)


def step_table(repeats: int) -> None:
    steps: dict[tuple[str, str], list[dict]] = {}
    for _ in range(repeats):
        for terms in ("kd", "lm+kd"):
            for variant in ("whole", "chunked"):
                r = peak_of(STEP, [variant, terms, str(VOCAB)], ROOT)
                steps.setdefault((terms, variant), []).append(r)
                print(f"step {terms} {variant}: {r['step_s']:.2f} s, peak {r['peak'] / 2**30:.2f} GiB", flush=True)
    print(f"\none step, vocabulary {VOCAB:,}, 4,096 tokens, {repeats} processes per variant (median)")
    print("| loss | whole: peak GiB | chunked: peak GiB | peak ratio | whole: s/step | chunked: s/step | time ratio |")
    print("|---|---|---|---|---|---|---|")
    for terms in ("kd", "lm+kd"):
        w, c = steps[(terms, "whole")], steps[(terms, "chunked")]
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"| {terms} | {med(w, 'peak') / 2**30:.2f} | {med(c, 'peak') / 2**30:.2f} | "
              f"{med(c, 'peak') / med(w, 'peak'):.3f} | {med(w, 'step_s'):.2f} | {med(c, 'step_s'):.2f} | "
              f"{statistics.median(a['step_s'] / b['step_s'] for a, b in zip(c, w)):.2f} |")


def chunk_table(repeats: int) -> None:
    times: dict[int, list[float]] = {}
    for _ in range(repeats):
        for mb in (16, 32, 64, 128):
            r = peak_of(CHUNKS, [str(mb), str(VOCAB)], ROOT)
            times.setdefault(mb, []).append(r["step_s"])
            print(f"chunks of {mb} MiB: {r['step_s']:.2f} s/step", flush=True)
    print(f"\nlm + token_kd step of the transformers, 8 x 256 tokens, vocabulary {VOCAB:,} (median of {repeats})")
    print("| CHUNK_BYTES | rows per chunk | s/step |")
    print("|---|---|---|")
    for mb, ts in times.items():
        print(f"| {mb} MiB | {(mb << 20) // (4 * VOCAB)} | {statistics.median(ts):.2f} |")


def run_table(repeats: int, run_steps: int, baseline_rev: str) -> None:
    from kdlab.data import word_corpus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokens = 8 * 256 * (run_steps + 1) + 1
        corpus = word_corpus.generate(tmp / "corpus", VOCAB, {"train": tokens, "val": 4 * 256 + 1, "test": 4 * 256 + 1})
        recipe = tmp / "r.toml"
        recipe.write_text(RECIPE.format(corpus=corpus, sequences=8 * run_steps))
        base = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), baseline_rev], check=True)
        try:
            runs: dict[str, list[dict]] = {}
            for i in range(repeats):
                for name, cwd in (("baseline", base), ("this", ROOT)):
                    r = peak_of(RUN, [str(recipe), str(tmp / f"{name}{i}")], cwd)
                    runs.setdefault(name, []).append(r)
                    print(f"run {name}: {r['tokens_s']:.0f} tokens/s, peak {r['peak'] / 2**30:.2f} GiB", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
        b, t = runs["baseline"], runs["this"]
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"\nkdlab run, {run_steps} steps of 8 x 256 tokens, vocabulary {VOCAB:,} (median of {repeats})")
        print("| code | peak GiB | train tokens/s |")
        print("|---|---|---|")
        print(f"| {baseline_rev} (whole logits) | {med(b, 'peak') / 2**30:.2f} | {med(b, 'tokens_s'):.0f} |")
        print(f"| this checkout (chunked) | {med(t, 'peak') / 2**30:.2f} | {med(t, 'tokens_s'):.0f} |")
        print(f"ratios: peak {med(t, 'peak') / med(b, 'peak'):.3f}, tokens/s {med(t, 'tokens_s') / med(b, 'tokens_s'):.2f}")


if __name__ == "__main__":
    main()
