"""The text data set: tokenisation, masks, packing, truncation, bad lines, the tokeniser kept."""

from __future__ import annotations

import json

import pytest
import torch

from kdlab.data import dialogue_corpus, text
from kdlab.engine.errors import KdlabError

DIALOGUE = {"turns": [{"speaker": "user", "text": "Меня зовут Анна."}, {"speaker": "agent", "text": "Привет!"},
                      {"speaker": "user", "text": "Как меня зовут?"}, {"speaker": "agent", "text": "Тебя зовут Анна."}],
            "recall": {"slot": "name", "value": "Анна"}}


def make_dialogues(root, n: int = 40, seed: int = 0):
    """A small corpus in the generator's format (what the recipe smoke tests train on)."""
    dialogue_corpus.generate(root, dialogues=n, seed=seed)
    return root


def write_split_files(root, lines_per_split: dict[str, list[str]], suffix: str = ".jsonl"):
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in lines_per_split.items():
        (root / f"{split}{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_dialogue_targets_are_only_the_agents_turns_and_padding_is_ignored(tmp_path):
    line = json.dumps(DIALOGUE, ensure_ascii=False)
    root = write_split_files(tmp_path / "d", {s: [line] * 3 for s in ("train", "val", "test")})
    bundle = text.build(text.TextConfig(dir=str(root), seq_len=64, vocab_size=300), seed=0)
    td = bundle.extra["text"]
    tok = td.tokenizer
    x, y = bundle.train.x[0], bundle.train.y[0]
    ids, response = text.encode_dialogue(tok, DIALOGUE["turns"], {s: tok.token_to_id(s) for s in text.SPECIALS})
    n = len(ids) - 1
    assert torch.equal(x[:n], torch.tensor(ids[:-1]))
    assert (x[n:] == td.pad_id).all() and (y[n:] == -1).all()  # padding: no target
    # the targets left are exactly the agents' text and end-of-turn tokens
    kept = y[:n] >= 0
    assert kept.tolist() == response[1:]
    agent_text = tok.decode([t for t in y[:n][kept].tolist() if t != td.end_id])
    assert agent_text.split() == "Привет! Тебя зовут Анна.".split()
    # the prompt of the last response ends with its <|agent|> token
    p = int(td.splits["train"].prompt_lens[0])
    assert int(x[p - 1]) == td.agent_id and tok.decode(ids[p:-1]).strip() == "Тебя зовут Анна."
    assert td.splits["val"].recall == ["Анна"] * 3 and td.splits["val"].responses[0] == "Тебя зовут Анна."


def test_loss_on_all_keeps_user_tokens_as_targets(tmp_path):
    line = json.dumps(DIALOGUE, ensure_ascii=False)
    root = write_split_files(tmp_path / "d", {s: [line] for s in ("train", "val", "test")})
    responses = text.build(text.TextConfig(dir=str(root), seq_len=64, vocab_size=300), seed=0)
    everything = text.build(text.TextConfig(dir=str(root), seq_len=64, vocab_size=300, loss_on="all"), seed=0)
    assert (everything.train.y[0] >= 0).sum() > (responses.train.y[0] >= 0).sum()
    assert torch.equal(everything.train.y[0] >= 0, everything.train.x[0] != everything.extra["text"].pad_id)


def test_long_dialogue_keeps_its_end(tmp_path):
    long = {"turns": [{"speaker": "user", "text": f"слово номер {i}"} for i in range(30)]
            + [{"speaker": "agent", "text": "Конец."}]}
    root = write_split_files(tmp_path / "d", {s: [json.dumps(long, ensure_ascii=False)] for s in ("train", "val", "test")})
    bundle = text.build(text.TextConfig(dir=str(root), seq_len=16, vocab_size=300), seed=0)
    tok, td = bundle.extra["text"].tokenizer, bundle.extra["text"]
    x, y = bundle.train.x[0], bundle.train.y[0]
    assert (x != td.pad_id).all()  # full: truncated, not padded
    assert tok.decode([t for t in y.tolist() if t >= 0 and t != td.end_id]).strip() == "Конец."
    assert int(x[int(td.splits["train"].prompt_lens[0]) - 1]) == td.agent_id


def test_plain_text_is_packed_with_every_token_a_target(tmp_path):
    lines = [f"строка {i} и немного текста" for i in range(40)]
    root = write_split_files(tmp_path / "p", {s: lines for s in ("train", "val", "test")}, suffix=".txt")
    bundle = text.build(text.TextConfig(dir=str(root), seq_len=8, vocab_size=300), seed=0)
    x, y = bundle.train.x, bundle.train.y
    assert x.shape[1] == 8 and (y >= 0).all()
    assert torch.equal(x.flatten()[1:], y.flatten()[:-1])  # targets are the inputs shifted by one
    assert bundle.extra["text"].splits == {}
    with pytest.raises(KdlabError, match="loss_on = 'responses' needs dialogues"):
        text.build(text.TextConfig(dir=str(root), seq_len=8, vocab_size=300, loss_on="responses"), seed=0)


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ('{"turns": []}', "a dialogue needs a non-empty list 'turns'"),
    ('{"turns": [{"speaker": "bot", "text": "hi"}]}', r"turns\[0\].speaker must be 'user' or 'agent'"),
    ('{"turns": [{"speaker": "user", "text": "  "}]}', r"turns\[0\].text must be a non-empty string"),
    ('{"turns": [{"speaker": "user", "text": "hi"}], "recall": 3}', "'recall' must be an object"),
])
def test_bad_line_is_named_with_file_and_line(tmp_path, line, message):
    good = json.dumps(DIALOGUE, ensure_ascii=False)
    root = write_split_files(tmp_path / "d", {"train": [good, good], "val": [good, "", line], "test": [good]})
    with pytest.raises(KdlabError, match=rf"val.jsonl:3: {message}"):
        text.build(text.TextConfig(dir=str(root)), seed=0)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
@pytest.mark.parametrize(("bad", "message"), [(b"caf\xe9 au lait\n", r"not UTF-8 text \(byte 0xe9"),
                                              (b"\x00\x01\x02binary", "a NUL byte; this is a binary file")])
def test_a_text_file_that_is_not_utf8_text_is_one_line_naming_file_and_line(tmp_path, suffix, bad, message):
    good = json.dumps(DIALOGUE, ensure_ascii=False) if suffix == ".jsonl" else "a line of text"
    root = write_split_files(tmp_path / "d", {s: [good] * 4 for s in ("train", "val", "test")}, suffix=suffix)
    with open(root / f"val{suffix}", "ab") as f:
        f.write(bad)
    with pytest.raises(KdlabError, match=rf"val{suffix}:5: {message}"):
        text.build(text.TextConfig(dir=str(root)), seed=0)


def test_missing_split_and_mixed_formats_are_refused(tmp_path):
    good = json.dumps(DIALOGUE, ensure_ascii=False)
    root = write_split_files(tmp_path / "d", {"train": [good], "val": [good]})
    with pytest.raises(KdlabError, match="no test.jsonl or test.txt"):
        text.build(text.TextConfig(dir=str(root)), seed=0)
    (root / "test.txt").write_text("plain\n", encoding="utf-8")
    with pytest.raises(KdlabError, match="mix .jsonl and .txt"):
        text.build(text.TextConfig(dir=str(root)), seed=0)


def test_bpe_is_deterministic_and_a_saved_tokenizer_loads_back(tmp_path, monkeypatch):
    root = make_dialogues(tmp_path / "d")
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache_a"))  # each trains its own
    a = text.build(text.TextConfig(dir=str(root), vocab_size=400), seed=0)
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache_b"))
    b = text.build(text.TextConfig(dir=str(root), vocab_size=400), seed=1)
    assert a.extra["text"].tokenizer.to_str() == b.extra["text"].tokenizer.to_str()
    assert a.key["tokenizer"] == b.key["tokenizer"]
    saved = tmp_path / "tokenizer.json"
    saved.write_text(a.extra["text"].tokenizer.to_str(), encoding="utf-8")
    c = text.build(text.TextConfig(dir=str(root), tokenizer=str(saved)), seed=0)
    assert torch.equal(a.train.x, c.train.x) and torch.equal(a.train.y, c.train.y)
    with pytest.raises(KdlabError, match="no tokenizer.json there"):
        text.build(text.TextConfig(dir=str(root), tokenizer=str(tmp_path / "nowhere")), seed=0)


def test_the_bpe_is_trained_once_per_corpus_and_settings_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "cache"))
    root = make_dialogues(tmp_path / "d")
    first = text.build(text.TextConfig(dir=str(root), vocab_size=400), seed=0)
    trained = []
    real = text.train_bpe
    monkeypatch.setattr(text, "train_bpe", lambda *a: trained.append(a) or real(*a))
    again = text.build(text.TextConfig(dir=str(root), vocab_size=400, seq_len=64), seed=3)
    assert trained == []  # read from the cache: the same corpus and vocabulary
    assert again.extra["text"].tokenizer.to_str() == first.extra["text"].tokenizer.to_str()
    text.build(text.TextConfig(dir=str(root), vocab_size=420), seed=0)
    assert len(trained) == 1  # another vocabulary size: trained
    make_dialogues(root, n=41)  # another corpus: trained
    text.build(text.TextConfig(dir=str(root), vocab_size=400), seed=0)
    assert len(trained) == 2
    for path in (tmp_path / "cache" / "tokenizers").iterdir():  # a damaged file: trained again, same result
        path.write_text("{not json", encoding="utf-8")
    redone = text.build(text.TextConfig(dir=str(root), vocab_size=400), seed=0)
    assert len(trained) == 3
    assert redone.extra["text"].tokenizer.to_str() == real(*trained[-1]).to_str()


def test_the_data_key_follows_seq_len_and_loss_on(tmp_path):
    """The key lacked the settings: a teacher cache built at one seq_len was read at another
    (a shape-mismatch traceback)."""
    line = json.dumps(DIALOGUE, ensure_ascii=False)
    root = write_split_files(tmp_path / "d", {s: [line] * 3 for s in ("train", "val", "test")})
    keys = [text.build(text.TextConfig(dir=str(root), seq_len=n, vocab_size=300, loss_on=on), seed=0).key
            for n, on in ((64, "responses"), (32, "responses"), (64, "all"))]
    assert keys[0] != keys[1] and keys[0] != keys[2]
    assert keys[0] == text.build(text.TextConfig(dir=str(root), seq_len=64, vocab_size=300, loss_on="responses"), seed=0).key
