"""``kdlab data ru-phonemes``: a synthetic Russian phoneme-recognition corpus.

Text: sequences of 2-6 words drawn from wordfreq's Russian list (Cyrillic words only). Audio:
espeak-ng through espeakng-loader with a random voice variant, speaking rate and pitch, resampled
from 22,050 Hz to 16 kHz, with additive noise (white, pink, brown, or Russian babble) at a random
SNR. Labels: the same engine's IPA for the same text and voice, stress marks removed, one token per
phoneme (the inventory below). An utterance with a phoneme outside the inventory (a word read as
English, a rare allophone) is drawn again, never written. Splits: validation and test are spoken
only by voice variants never used in training.

Output: ``OUT/manifest.jsonl`` (see :mod:`kdlab.data.manifest`), ``OUT/phonemes.txt``,
``OUT/clips/<split>/<n>.wav``, ``OUT/corpus.json`` (settings and counts). One seed gives the
same files (each corpus made in a fresh process: see :mod:`kdlab.speech.espeak`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kdlab.data.audio import resample
from kdlab.speech.audio import coloured_noise, mix_at_snr, write_audio
from kdlab.speech.espeak import engine, voice_variants, word_lists
from kdlab.speech.kws_corpus import speaker_id
from kdlab.data.manifest import Utterance, write_manifest

log = logging.getLogger("kdlab.data")
SAMPLE_RATE = 16000

# espeak-ng's Russian phonemes as it writes them in IPA (stress removed), the 48 that cover the
# 20,000 most frequent Russian words: vowels (reduced ʌ, ɪ; ja and ju are single espeak phonemes;
# u" is espeak's unstressed u) and consonants with their palatalised (ʲ) pairs.
RU_PHONEMES = [
    "a", "e", "i", "o", "u", "y", "ɑ", "ʌ", "ɪ", "ɛ", "ja", "ju", 'u"',
    "b", "bʲ", "d", "dʲ", "f", "fʲ", "ɡ", "ɡʲ", "j", "k", "kʲ", "m", "mʲ", "n", "nʲ", "p", "pʲ",
    "r", "rʲ", "s", "sʲ", "t", "tʲ", "ts", "tʃʲ", "v", "vʲ", "x", "z", "ʒ", "ʃ", "ɕ", "ʑ", "ɭ", "ɭʲ",
]


def russian_words(top: int = 20000) -> list[str]:
    top_n_list = word_lists()

    cyrillic = set("абвгдеёжзийклмнопрстуфхцчшщъыьэюя")
    return [w for w in top_n_list("ru", top) if len(w) > 1 and set(w) <= cyrillic]


def generate(out: str | Path, *, utterances: int = 3000, seed: int = 0, min_words: int = 2, max_words: int = 6,
             held_out_voices: float = 0.15, snr_db: tuple[float, float] = (0.0, 30.0), noise_prob: float = 0.9,
             progress: bool = True) -> dict:
    out = Path(out)
    rng = np.random.default_rng(seed)
    eng = engine()
    voices = voice_variants("ru")
    rng.shuffle(voices)
    n_held = max(1, int(round(len(voices) * held_out_voices)))
    split_voices = {"test": voices[:n_held], "val": voices[n_held : 2 * n_held], "train": voices[2 * n_held :]}
    words = russian_words()
    known = set(RU_PHONEMES)
    noises = [coloured_noise(20 * SAMPLE_RATE, rng, c) for c in ("white", "pink", "brown")]
    babble = np.zeros(20 * SAMPLE_RATE, np.float32)
    for _ in range(60):
        text = " ".join(rng.choice(words, size=3))
        wave = resample(eng.synth(text, str(rng.choice(split_voices["train"])), seed=int(rng.integers(2**31))),
                        eng.sample_rate, SAMPLE_RATE)
        start = int(rng.integers(0, len(babble) - min(len(wave), len(babble)) + 1))
        babble[start : start + len(wave)] += wave[: len(babble) - start]
    noises.append(babble / (np.abs(babble).max() + 1e-9))

    split_of = rng.choice(np.array(["train", "val", "test"]), size=utterances, p=[0.8, 0.1, 0.1])
    rows, redrawn = [], 0
    for i in tqdm(range(utterances), desc="ru-phonemes corpus", unit="utt", disable=not progress, mininterval=0.5):
        split = str(split_of[i])
        voice = str(rng.choice(split_voices[split]))
        while True:
            text = " ".join(rng.choice(words, size=int(rng.integers(min_words, max_words + 1))))
            phones = eng.phonemes(text, voice)
            if phones and set(phones) <= known:
                break
            redrawn += 1
        wave = eng.synth(text, voice, rate=int(rng.integers(110, 260)), pitch=int(rng.integers(35, 86)),
                         pitch_range=int(rng.integers(20, 71)), seed=int(rng.integers(2**31)))
        wave = resample(wave, eng.sample_rate, SAMPLE_RATE) * float(rng.uniform(0.3, 1.0))
        if rng.random() < noise_prob:
            noise = noises[int(rng.integers(len(noises)))]
            reps = -(-len(wave) // len(noise))
            offset = int(rng.integers(0, len(noise)))
            wave = mix_at_snr(wave, np.tile(noise, reps + 1)[offset : offset + len(wave)], float(rng.uniform(*snr_db)))
        rel = f"clips/{split}/{i:06d}.wav"
        write_audio(out / rel, wave, SAMPLE_RATE)
        rows.append(Utterance(rel, tuple(phones), speaker_id(voice), len(wave) / SAMPLE_RATE, split))
        if not progress and (i + 1) % max(1, utterances // 10) == 0:
            log.info("ru-phonemes corpus: %d/%d utterances", i + 1, utterances)
    write_manifest(out / "manifest.jsonl", rows, RU_PHONEMES)
    summary = {
        "seed": seed, "utterances": utterances, "sample_rate": SAMPLE_RATE, "snr_db": list(snr_db),
        "noise_prob": noise_prob, "words_per_utterance": [min_words, max_words], "redrawn": redrawn,
        "phonemes": len(RU_PHONEMES),
        "splits": {s: {"utterances": sum(r.split == s for r in rows),
                       "hours": round(sum(r.duration for r in rows if r.split == s) / 3600, 3),
                       "voices": split_voices[s]} for s in ("train", "val", "test")},
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary
