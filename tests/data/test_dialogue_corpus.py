"""The generated memory-dialogue corpus: deterministic, split, and every recall answerable."""

from __future__ import annotations

import json

import pytest

from kdlab.data import dialogue_corpus


def _read(root, split):
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_same_seed_same_corpus_other_seed_other_corpus(tmp_path):
    a = dialogue_corpus.generate(tmp_path / "a", dialogues=50, seed=3)
    dialogue_corpus.generate(tmp_path / "b", dialogues=50, seed=3)
    dialogue_corpus.generate(tmp_path / "c", dialogues=50, seed=4)
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()
    assert {s: v["dialogues"] for s, v in a.items()} == {"train": 40, "val": 5, "test": 5}


def test_every_fact_is_stated_first_then_small_talk_then_recalled(tmp_path):
    dialogue_corpus.generate(tmp_path, dialogues=60, seed=0)
    langs = set()
    for d in _read(tmp_path, "train"):
        langs.add(d["lang"])
        turns, facts = d["turns"], len(d["persona"])
        talk = {t for pair in dialogue_corpus.SMALL_TALK[d["lang"]] for t in pair}
        assert [t["text"] for t in turns[0: 2 * facts: 2]] == d["persona"]
        # at least one exchange of small talk right after the facts, then one question per fact
        assert turns[2 * facts]["text"] in talk and turns[2 * facts + 1]["text"] in talk
        questions = turns[-2 * facts:]
        assert not any(t["text"] in talk for t in questions)
        # the last answer holds the recalled fact, which the user stated in the opening turns
        value = d["recall"]["value"]
        assert turns[-1]["speaker"] == "agent" and value in turns[-1]["text"]
        assert any(value in p for p in d["persona"])
    assert langs == {"ru", "en"}


def test_unknown_language_is_refused(tmp_path):
    with pytest.raises(ValueError, match="languages must be among ru, en"):
        dialogue_corpus.generate(tmp_path, dialogues=10, langs=("de",))
