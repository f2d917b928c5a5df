"""The compact teacher store's decoding error on a real teacher's distributions over real text.

    python -m benchmarks.store_codec TEACHER.pt TOKENIZER.json TEXT.txt [--k 8 32 64 128] [--tokens 16384]

TEACHER.pt: an exported ``transformer_lm`` or ``conv_lm`` (e.g. the teacher of
``benchmarks/lm_topk.py``, trained on the Vim documentation, with ``--work DIR``: DIR/runs/
lm_topk_teacher/<run>/models/teacher.pt and .../tokenizer.json, and DIR/corpus/test.txt). The
text is tokenised, cut into the teacher's sequence length, and for every position the exact
top-k + tail of the teacher's next-token distribution is compared with what the store decodes
(kdlab.infra.teacher_store.encode / decode): KL(exact || decoded) in nats, mean and largest,
with the bytes per token and the mass the k keep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kdlab.engine.checkpoint import load_model_file, load_weights
from kdlab.engine.recipe import structure_stored
from kdlab.infra import teacher_store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("teacher", type=Path)
    parser.add_argument("tokenizer", type=Path)
    parser.add_argument("text", type=Path)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 32, 64, 128])
    parser.add_argument("--tokens", type=int, default=16_384)
    args = parser.parse_args()
    from tokenizers import Tokenizer

    from kdlab.engine.types import DataBundle
    from kdlab.models import conv_lm, transformer_lm

    data = load_model_file(args.teacher)
    module = {"transformer_lm": transformer_lm, "conv_lm": conv_lm}[data["arch"]]
    config_class = {"transformer_lm": transformer_lm.TransformerLMConfig, "conv_lm": conv_lm.ConvLMConfig}[data["arch"]]
    length = data["input_shape"][0]
    bundle = DataBundle(train=None, val=None, test=None, num_classes=data["num_classes"], input_shape=(length,))
    model = module.build(structure_stored(data["config"], config_class, args.teacher), bundle)
    load_weights(model, data["state_dict"], str(args.teacher))
    model.train(False)
    ids = Tokenizer.from_file(str(args.tokenizer)).encode(args.text.read_text(encoding="utf-8")).ids
    rows = min(len(ids) // length, max(1, args.tokens // length))
    x = torch.tensor(ids[: rows * length]).view(rows, length)
    with torch.no_grad():
        logp = torch.cat([torch.log_softmax(model(x[i: i + 16]).float(), -1) for i in range(0, rows, 16)])
    logp = logp.reshape(-1, logp.shape[-1])
    vocab = logp.shape[-1]
    print(f"teacher {args.teacher.name}: {len(logp):,} positions of {args.text}, vocabulary {vocab:,}")
    print("| k | bytes a token | kept mass (mean) | KL exact -> decoded, mean (nats) | largest |")
    print("|---|---|---|---|---|")
    for k in args.k:
        values, index = logp.topk(k, -1)
        got, got_index = teacher_store.decode(teacher_store.encode(values, index, vocab), k, vocab)
        assert torch.equal(got_index, index)
        tail = lambda v: torch.log((-torch.expm1(torch.logsumexp(v.double(), -1))).clamp(min=1e-30))  # noqa: E731
        p = torch.cat([values.double(), tail(values)[:, None]], -1)
        q = torch.cat([got.double(), tail(got)[:, None]], -1)
        kl = (p.exp() * (p - q)).sum(-1)
        print(f"| {k} | {teacher_store.row_bytes(k, vocab)} | {float(values.exp().sum(-1).mean()):.3f} | "
              f"{float(kl.mean()):.2e} | {float(kl.max()):.2e} |")


if __name__ == "__main__":
    main()
