from __future__ import annotations

import pytest

from kdlab.data import word_corpus
from kdlab.data.text import SPECIALS


def test_the_tokenizer_has_exactly_the_vocabulary_and_the_splits_their_token_counts(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    root = word_corpus.generate(tmp_path / "c", 1_000, {"train": 100, "val": 41})
    tok = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    assert tok.get_vocab_size() == 1_000
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    for split, n in {"train": 100, "val": 41}.items():
        text = (root / f"{split}.txt").read_text(encoding="utf-8")
        ids = [i for line in text.splitlines() for i in tok.encode(line).ids]
        assert len(ids) == n and min(ids) >= len(SPECIALS) and max(ids) < 1_000
