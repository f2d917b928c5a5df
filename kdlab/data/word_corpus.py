"""A generated corpus with a vocabulary of any size, for measuring what a real vocabulary's size
costs (memory, speed) without training a BPE that large: ``<split>.txt`` files of 40-word lines
of uniformly drawn words and, as ``tokenizer.json``, a word-level tokenizer of exactly
``vocab_size`` entries (kdlab's four specials first, then ``w4``, ``w5``, ...). Its text has no
structure to learn: use it for cost, never for quality."""

from __future__ import annotations

from pathlib import Path

import torch


def generate(root: Path, vocab_size: int, tokens_per_split: dict[str, int], seed: int = 0) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from kdlab.data.text import SPECIALS

    vocab = {s: i for i, s in enumerate(SPECIALS)} | {f"w{i}": i for i in range(len(SPECIALS), vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    root.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer.json"))
    g = torch.Generator().manual_seed(seed)
    for split, n in tokens_per_split.items():
        ids = torch.randint(len(SPECIALS), vocab_size, (n,), generator=g).tolist()
        lines = [" ".join(f"w{i}" for i in ids[s: s + 40]) for s in range(0, n, 40)]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
