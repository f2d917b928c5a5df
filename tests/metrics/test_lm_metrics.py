"""Language-model metrics: perplexity, token accuracy, token F1, fact recall, hits@1 candidates."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.data.text import SplitText
from kdlab.metrics.lm import contains_fact, perplexity_and_accuracy, pick_candidates, token_f1


def test_perplexity_and_accuracy_over_valid_targets():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])
    targets = torch.tensor([[0, 2, -1]])
    ppl, acc = perplexity_and_accuracy(probs.log(), targets)
    assert ppl == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.1)) / 2), rel=1e-5)
    assert acc == pytest.approx(0.5)


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
