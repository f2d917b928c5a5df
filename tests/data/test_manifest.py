import csv
import json

import numpy as np
import pytest
import soundfile

from kdlab.engine.errors import KdlabError
from kdlab.data.manifest import Utterance, read_manifest, write_manifest
from kdlab.speech.common_voice import convert_common_voice


def test_round_trip(tmp_path):
    rows = [Utterance("clips/a.wav", ("p", "rʲ", "i"), "spk1", 1.25, "train"),
            Utterance("clips/b.wav", ("d", "a"), "spk2", 0.5, "test")]
    write_manifest(tmp_path / "manifest.jsonl", rows, ["a", "d", "i", "p", "rʲ"])
    back, inventory = read_manifest(tmp_path / "manifest.jsonl")
    assert inventory == ["a", "d", "i", "p", "rʲ"]
    assert [(u.audio, u.phonemes, u.speaker, u.duration, u.split, u.line) for u in back] == \
        [(r.audio, r.phonemes, r.speaker, r.duration, r.split, n) for n, r in enumerate(rows, start=1)]
    assert json.loads((tmp_path / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[0])["phonemes"] == "p rʲ i"


@pytest.mark.parametrize(("line", "match"), [
    ("{not json", r"manifest.jsonl:2: not JSON"),
    ('{"audio": "x.wav", "phonemes": "a", "speaker": "s", "duration": 1}', r"manifest.jsonl:2: missing split"),
    ('{"audio": "x.wav", "phonemes": "a", "speaker": "s", "duration": 1, "split": "dev"}',
     r"manifest.jsonl:2: split 'dev' is not one of train, val, test"),
    ("42", r"manifest.jsonl:2: expected a JSON object with audio, .* got 42"),
    ("null", r"manifest.jsonl:2: expected a JSON object"),
    ('{"audio": "x.wav", "phonemes": "a", "speaker": "s", "duration": "abc", "split": "train"}',
     r"manifest.jsonl:2: duration must be a number of seconds, got 'abc'"),
    ('{"audio": 7, "phonemes": "a", "speaker": "s", "duration": 1, "split": "train"}',
     r"manifest.jsonl:2: audio must be a string, got 7"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, match):
    write_manifest(tmp_path / "manifest.jsonl", [Utterance("a.wav", ("a",), "s", 1.0, "train")], ["a"])
    with open(tmp_path / "manifest.jsonl", "a", encoding="utf-8") as f:
        f.write(line + "\n")
    with pytest.raises(KdlabError, match=match):
        read_manifest(tmp_path / "manifest.jsonl")


def make_common_voice(root, rate=48000):
    """A Common Voice language folder: TSVs with the real columns, MP3 clips (one broken)."""
    (root / "clips").mkdir(parents=True)
    sentences = {"train": ["дома хорошо", "мама"], "dev": ["папа"], "test": ["да нет"]}
    rng = np.random.default_rng(0)
    n = 0
    for split, texts in sentences.items():
        with open(root / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale", "segment"])
            for text in texts:
                name = f"common_voice_ru_{n}.mp3"
                soundfile.write(root / "clips" / name, (0.1 * rng.standard_normal(rate)).astype(np.float32), rate, format="MP3")
                w.writerow([f"client{n:04d}" * 4, name, text, 2, 0, "", "", "", "ru", ""])
                n += 1
            if split == "train":
                (root / "clips" / "broken.mp3").write_bytes(b"not audio")
                w.writerow(["clientx", "broken.mp3", "слово", 2, 0, "", "", "", "ru", ""])
    return root


def test_common_voice_conversion(tmp_path):
    root = make_common_voice(tmp_path / "cv" / "ru")
    summary = convert_common_voice(root, tmp_path / "out")
    assert summary["utterances"] == 4
    assert len(summary["skipped"]) == 1 and "train.tsv:4: broken.mp3: unreadable audio" in summary["skipped"][0]
    utts, inventory = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [u.split for u in utts] == ["train", "train", "val", "test"]
    assert utts[1].phonemes == ("m", "ɑ", "m", "a") and set(utts[1].phonemes) <= set(inventory)
    assert utts[0].duration == pytest.approx(1.0, abs=0.1)
    assert (tmp_path / "out" / utts[0].audio).resolve() == (root / "clips" / "common_voice_ru_0.mp3").resolve()


def test_a_manifest_that_is_not_utf8_names_the_file(tmp_path):
    write_manifest(tmp_path / "manifest.jsonl", [Utterance("a.wav", ("a",), "s", 1.0, "train")], ["a"])
    with open(tmp_path / "manifest.jsonl", "ab") as f:
        f.write(b'{"audio": "caf\xe9.wav"}\n')
    with pytest.raises(KdlabError, match=r"manifest.jsonl:2: not UTF-8 text \(byte 0xe9"):
        read_manifest(tmp_path / "manifest.jsonl")


@pytest.mark.parametrize(("content", "message"), [(b"a\n\xff\xfe\x00b\n", r"phonemes.txt:2: not UTF-8 text"),
                                                  (b"a\nb\x00\x00\n", r"phonemes.txt:2: a NUL byte; this is a binary file")])
def test_a_binary_phoneme_inventory_is_one_line_naming_it(tmp_path, content, message):
    write_manifest(tmp_path / "manifest.jsonl", [Utterance("a.wav", ("a",), "s", 1.0, "train")], ["a"])
    (tmp_path / "phonemes.txt").write_bytes(content)
    with pytest.raises(KdlabError, match=message):
        read_manifest(tmp_path / "manifest.jsonl")
