"""kdlab against TRL's GKD trainer on the same language-model distillation job (issue #29 item 6).

    python -m benchmarks.trl_gkd --trl-python /tmp/trlenv/bin/python [--steps 80] [--repeats 3] [--threads 1]

The job (the one issue #29 measured): a Llama teacher of 3.7 M parameters (4 layers, width 256)
and a Llama student of 0.65 M (2 layers, width 128), both Hugging Face ``LlamaForCausalLM``
saved with ``save_pretrained`` (random weights: speed does not depend on them) and read by both
tools from the same directories; BPE of 2,000 tokens trained on real text (the Vim documentation
of Debian's vim-runtime, as benchmarks/lm_topk.py cuts it); 16 sequences of 128 target tokens a
step, the same sequences for both; forward KL from the live teacher, temperature 1, the only
loss; AdamW lr 1e-3, no weight decay, constant rate, no gradient clipping; ``--steps`` steps;
``--threads`` torch threads. TRL: ``trl.experimental.gkd.GKDTrainer`` with lmbda 0 (no
on-policy generation), beta 0 (its generalised JSD is then the forward KL), fed 129-token
sequences (it shifts them: 128 loss positions, as kdlab's 128 inputs and 128 targets), float32
without gradient checkpointing like kdlab (TRL's SFTConfig defaults to bf16 autocast and
checkpointing, which on this CPU made its steps about 10x slower: set off here).

Variants, each in its own process (its peak resident memory is that process's ``ru_maxrss``),
interleaved ``--repeats`` times, medians reported:

* ``trl``: TRL's trainer. tokens/s: 16 x 128 x steps over the wall time from its epoch start
  to the last step's end (a TrainerCallback), what kdlab's ``train_tokens_per_s`` measures.
* ``kdlab_live``: ``kdlab run`` of the same job (the teacher a stage of zero epochs read from its
  directory), ``train_tokens_per_s`` of the lm_metrics plugin.
* ``kdlab_store``: the same with ``teacher_cache = { topk = 64, compact = true }``: the teacher's
  top-64 + tail read from the compact store, labelled once before the repeats (the labelling is
  not timed here; its tokens/s is printed). A different target (top-64 + tail, not the full
  distribution): its point is the throughput of training from an offline store.

Loss check first: one batch through both tools' loss code (kdlab's chunked ``token_kd`` term,
TRL's ``generalized_jsd_loss`` on whole logits) with the same weights: values and the student's
gradients must agree to 1e-5, else the benchmark stops.

TRL runs with ``--trl-python``: an interpreter where ``trl`` (and its ``datasets`` and
``accelerate``) import, with the same torch and transformers as kdlab's (BENCHMARKS.md says how
such an environment was made without touching kdlab's pins).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import peak_of
from benchmarks.lm_topk import corpus

ROOT = Path(__file__).resolve().parent.parent
BATCH, SEQ = 16, 128

PREPARE = r"""
import json, sys
from pathlib import Path
import torch
from kdlab.data import text
from kdlab.models import transformer_lm as tl

work, steps = Path(sys.argv[1]), int(sys.argv[2])
cfg = text.TextConfig(dir=str(work / "corpus"), vocab_size=2000, seq_len=128, batch_size=16, train_limit=16 * steps)
data = text.build(cfg, seed=0)
tok = data.extra["text"].tokenizer
tok.save(str(work / "tokenizer.json"))
x, y = data.train.x, data.train.y
assert len(x) == 16 * steps, f"the corpus gives {len(x)} sequences, fewer than {16 * steps}"
torch.save(torch.cat([x, y[:, -1:]], dim=1).contiguous(), work / "sequences.pt")  # 129 tokens: inputs + the last target
vocab = data.num_classes
for name, layers, width, seed in (("teacher", 4, 256, 1), ("student", 2, 128, 2)):
    torch.manual_seed(seed)
    conf = tl.hf_config(tl.TransformerLMConfig(layers=layers, width=width, heads=4), vocab, 128)
    import transformers
    model = transformers.AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")
    model.save_pretrained(work / name)
print(json.dumps({"vocab": vocab, "sequences": len(x)}))
"""

# the loss of one batch in both tools' code, same weights: runs in the TRL interpreter (it needs
# trl) with this checkout on PYTHONPATH (kdlab's code)
PARITY = r"""
import json, sys
from pathlib import Path
import torch
import transformers
from trl.experimental.gkd import GKDTrainer
from kdlab import ModelOutput
from kdlab.methods.token_kd import token_kd_term
from kdlab.methods.vocab_chunks import RowsTerm
from kdlab.models.transformer_lm import TransformerLM

work = Path(sys.argv[1])
seqs = torch.load(work / "sequences.pt", weights_only=True)[:16]
load = lambda n: transformers.AutoModelForCausalLM.from_pretrained(work / n, attn_implementation="sdpa").float()
student, teacher = load("student"), load("teacher").eval()
vocab = student.config.vocab_size
# TRL: whole logits of 129 tokens, its own shift
with torch.no_grad():
    t_logits = teacher(input_ids=seqs).logits
s_logits = student(input_ids=seqs).logits
labels = seqs.clone()
trl_loss = GKDTrainer.generalized_jsd_loss(s_logits[:, :-1], t_logits[:, :-1], labels=labels[:, 1:], beta=0.0)
trl_loss.backward()
trl_grads = [p.grad.clone() for p in student.parameters()]
student.zero_grad(set_to_none=True)
# kdlab: its model wrapper on the 128 inputs, hidden states and head, the loss in chunks
s_model, t_model = TransformerLM(student, vocab, 128), TransformerLM(teacher, vocab, 128)
x = seqs[:, :-1]
with torch.no_grad():
    t_out = ModelOutput(logits=t_model(x, head=False))
s_out = ModelOutput(logits=s_model(x, head=False))
term = token_kd_term(s_out, [t_out], torch.ones_like(x, dtype=torch.bool), defer=True)
kd_loss, _ = RowsTerm.evaluate([term], [1.0])
kd_loss.backward()
grad_diff = max((p.grad - g).abs().max().item() for p, g in zip(student.parameters(), trl_grads))
print(json.dumps({"trl": trl_loss.item(), "kdlab": kd_loss.item(), "grad_diff": grad_diff}))
"""

TRL = r"""
import json, random, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[3]))
import transformers
from datasets import Dataset
from trl.experimental.gkd import GKDConfig, GKDTrainer

work, steps, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
seqs = torch.load(work / "sequences.pt", weights_only=True)
tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(work / "tokenizer.json"), pad_token="<|pad|>")
load = lambda n: transformers.AutoModelForCausalLM.from_pretrained(work / n, attn_implementation="sdpa")
student, teacher = load("student"), load("teacher")
dataset = Dataset.from_dict({"input_ids": seqs.tolist()})

def collate(rows):
    ids = torch.tensor([r["input_ids"] for r in rows])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

class Clock(transformers.TrainerCallback):
    start = end = None
    def on_epoch_begin(self, args, state, control, **kw):
        if self.start is None:
            self.start = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == steps:
            self.end = time.perf_counter()

args = GKDConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=16, learning_rate=1e-3,
                 lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, warmup_steps=0,
                 lmbda=0.0, beta=0.0, temperature=1.0, max_length=129, report_to=[], logging_steps=10**6,
                 save_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0, disable_dropout=True,
                 # SFTConfig's defaults: bf16 autocast and gradient checkpointing; kdlab trains this
                 # job in float32 without checkpointing, so TRL does too
                 bf16=False, fp16=False, gradient_checkpointing=False)
clock = Clock()
trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                     processing_class=tok, data_collator=collate, callbacks=[clock])
trainer.train()
print(json.dumps({"tokens_s": 16 * 128 * steps / (clock.end - clock.start)}))
"""

KDLAB = r"""
import json, logging, sys
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[3]))
from kdlab.engine.runner import run
logging.basicConfig(level=logging.WARNING)
said = []
class Said(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.getLogger("kdlab").addHandler(Said(level=logging.INFO))
logging.getLogger("kdlab").setLevel(logging.INFO)
r = run(Path(sys.argv[1]), out=Path(sys.argv[2]))
m = r.metrics["student"]
print(json.dumps({"tokens_s": m["train_tokens_per_s"], "labelled": any("labelling" in x for x in said),
                  "log": [x for x in said if "teacher_cache" in x][:6]}))
"""

RECIPE = """
name = "trl_job"
seed = 0
device = "cpu"
[data]
dataset = "text"
dir = "{work}/corpus"
tokenizer = "{work}/tokenizer.json"
seq_len = 128
batch_size = 16
eval_batch_size = 16
train_limit = {sequences}
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
model = {{ arch = "transformer_lm", hf_dir = "{work}/teacher" }}
optimizer = {{ name = "adamw", lr = 0.001 }}
methods.lm = {{}}
[stages.student]
epochs = 1
model = {{ arch = "transformer_lm", hf_dir = "{work}/student" }}
optimizer = {{ name = "adamw", lr = 0.001 }}
teachers = ["teacher"]
methods.token_kd = {{}}
{cache}
"""


def child(python: str, code: str, args: list[str]) -> dict:
    """``code`` in a fresh ``python`` -> its last JSON line, with its peak resident memory as ``peak``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": args[2] if len(args) > 2 else "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return peak_of(code, args, ROOT, python=python, env=env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trl-python", required=True, help="an interpreter where trl imports")
    parser.add_argument("--source", type=Path, default=Path("/usr/share/vim/vim90/doc"))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1")
    args = parser.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"{args.source}: not a directory (install Debian's vim-runtime, or pass --source)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus(args.source, work / "corpus", 900_000, 20_000)
        info = child(sys.executable, PREPARE, [str(work), str(args.steps)])
        print(f"vocabulary {info['vocab']:,}, {info['sequences']} sequences of 128 (+1)", flush=True)
        parity = child(args.trl_python, PARITY, [str(work)])
        print(f"one batch: TRL loss {parity['trl']:.7f}, kdlab {parity['kdlab']:.7f}, "
              f"|difference| {abs(parity['trl'] - parity['kdlab']):.1e}; student gradients differ by at most "
              f"{parity['grad_diff']:.1e}", flush=True)
        if abs(parity["trl"] - parity["kdlab"]) > 1e-5 or parity["grad_diff"] > 1e-5:
            raise SystemExit("the two tools do not compute the same loss: the comparison would be meaningless")
        recipes = {}
        for name, cache in (("kdlab_live", ""),
                            ("kdlab_store", f'methods.teacher_cache = {{ topk = 64, compact = true, dir = "{work}/store" }}')):
            recipes[name] = work / f"{name}.toml"
            recipes[name].write_text(RECIPE.format(work=work, sequences=BATCH * args.steps, cache=cache))
        child(sys.executable, KDLAB, [str(recipes["kdlab_store"]), str(work / "label_run"), args.threads])
        meta = json.loads(next((work / "store").rglob("meta.json")).read_text())
        print(f"store labelled at {meta['label_tokens_per_s']:.0f} tokens/s, {meta['row_bytes']} bytes a token",
              flush=True)
        runs: dict[str, list[dict]] = {}
        for i in range(args.repeats):
            for name in ("trl", "kdlab_live", "kdlab_store"):
                if name == "trl":
                    r = child(args.trl_python, TRL, [str(work), str(args.steps), args.threads, str(work / f"trl{i}")])
                else:
                    r = child(sys.executable, KDLAB, [str(recipes[name]), str(work / f"{name}{i}"), args.threads])
                runs.setdefault(name, []).append(r)
                print(f"{name}: {r['tokens_s']:.0f} tokens/s, peak {r['peak'] / 2**30:.2f} GiB"
                      + (" (it labelled the store again: the run is not a read from the store)"
                         if r.get("labelled") else ""), flush=True)
                if r.get("labelled"):
                    print("\n".join(r["log"]), flush=True)
    med = lambda name, k: statistics.median(r[k] for r in runs[name])  # noqa: E731
    print(f"\n{args.steps} steps of {BATCH} x {SEQ} tokens, {args.threads} thread(s), median of {args.repeats}")
    print("| variant | train tokens/s | peak GiB | tokens/s / TRL | peak / TRL |")
    print("|---|---|---|---|---|")
    for name in ("trl", "kdlab_live", "kdlab_store"):
        print(f"| {name} | {med(name, 'tokens_s'):.0f} | {med(name, 'peak') / 2**30:.2f} | "
              f"{med(name, 'tokens_s') / med('trl', 'tokens_s'):.2f} | {med(name, 'peak') / med('trl', 'peak'):.2f} |")


if __name__ == "__main__":
    main()
