"""Language-model metrics: perplexity, token accuracy, token F1, fact recall, hits@1 candidates."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.data.text import SplitText
from kdlab.metrics.lm import contains_fact, pick_candidates, text_size, token_f1, token_sums


def test_token_sums_over_valid_targets():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])
    targets = torch.tensor([[0, 2, -1]])
    nll, correct, count = token_sums(probs.log(), targets).tolist()
    assert nll == pytest.approx(-(math.log(0.5) + math.log(0.1)), rel=1e-6)
    assert (correct, count) == (1, 2)


def test_text_size_counts_the_bytes_and_characters_the_valid_targets_spell():
    from kdlab.data.text import SPECIALS, train_bpe

    lines = ["Твою кошку зовут Мурка.", "the cat sat on the mat", "кошка и cat"] * 5
    tok = train_bpe(lines, 300)
    end = tok.token_to_id(SPECIALS[3])
    a, b = tok.encode(lines[0]).ids, tok.encode(" " + lines[1]).ids
    rows = torch.full((2, max(len(a), len(b)) + 1), -1)
    rows[0, :len(a) + 1] = torch.tensor(a + [end])  # the end token spells nothing
    rows[1, :len(b)] = torch.tensor(b)
    n_bytes, n_chars = text_size(tok, rows)
    assert n_bytes == len(lines[0].encode()) + len((" " + lines[1]).encode())
    assert n_chars == len(lines[0]) + len(" " + lines[1]) and n_chars < n_bytes


@pytest.mark.parametrize(("pred", "ref", "f1"), [
    ("Твою кошку зовут Мурка.", "твою кошку зовут Мурка", 1.0),
    ("Твою кошку зовут Барсик.", "Твою кошку зовут Мурка.", 0.75),
    ("You live in Paris", "Your cat is called Tom.", 0.0),
    ("the the cat", "the cat", 2 * (2 / 3) * 1 / (2 / 3 + 1)),
])
def test_token_f1(pred, ref, f1):
    assert token_f1(pred, ref) == pytest.approx(f1)


def test_contains_fact_needs_whole_words():
    assert contains_fact("Твою кошку зовут Мурка.", "Мурка")
    assert contains_fact("you work as a cook", "Cook")
    assert not contains_fact("Твою кошку зовут Муркаа.", "Мурка") and not contains_fact("Tomsk", "Tom")


def test_candidates_start_with_the_reference_and_half_share_its_kind():
    kinds = ["name", "city"] * 10
    responses = [f"answer {i}" for i in range(20)]
    split = SplitText(inputs=torch.zeros(20, 4, dtype=torch.long), prompt_lens=torch.ones(20, dtype=torch.long),
                      responses=responses, recall=[None] * 20, kinds=kinds)
    cands = pick_candidates(split, 6, 10, torch.Generator().manual_seed(0))
    for i, row in enumerate(cands):
        assert row[0] == i and len(row) == 10 and len(set(row)) == 10
        assert sum(kinds[j] == kinds[i] for j in row[1:]) >= 4
    assert cands == pick_candidates(split, 6, 10, torch.Generator().manual_seed(0))
