import json
import subprocess
import sys

import soundfile

from kdlab.data.manifest import read_manifest
from kdlab.speech.ru_corpus import RU_PHONEMES


def _make(out, seed):
    subprocess.run([sys.executable, "-m", "kdlab", "data", "ru-phonemes", "--out", str(out), "--utterances", "12",
                    "--max-words", "3", "--seed", str(seed)], check=True, capture_output=True)
    return read_manifest(out / "manifest.jsonl")


def test_generator_labels_splits_and_determinism(tmp_path):
    utts, inventory = _make(tmp_path / "a", 1)
    again, _ = _make(tmp_path / "b", 1)
    other, _ = _make(tmp_path / "c", 2)
    assert inventory == RU_PHONEMES
    assert len(utts) == 12 and utts == again and utts != other
    for u in utts:
        assert u.phonemes and set(u.phonemes) <= set(RU_PHONEMES)  # IPA tokens, no stress marks
        assert not any(c in "".join(u.phonemes) for c in "ˈˌ_")
        wave, rate = soundfile.read(tmp_path / "a" / u.audio)
        assert rate == 16000 and abs(len(wave) / rate - u.duration) < 1e-3
        assert (tmp_path / "a" / u.audio).read_bytes() == (tmp_path / "b" / u.audio).read_bytes()
    summary = json.loads((tmp_path / "a" / "corpus.json").read_text())
    voices = {s: set(v["voices"]) for s, v in summary["splits"].items()}
    assert voices["test"].isdisjoint(voices["train"]) and voices["val"].isdisjoint(voices["train"])
