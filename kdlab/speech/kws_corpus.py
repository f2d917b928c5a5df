"""``kdlab data kws``: a synthetic keyword-spotting corpus in the Speech Commands layout.

The keyword and many other words (the 35 Speech Commands words, words that sound like the
keyword, and common English words from wordfreq) are spoken by espeak-ng voice variants with
random rate and pitch, resampled to 16 kHz, placed at a random offset in a 1-second clip and mixed
with background noise (white, pink, brown, babble) at a random SNR. The keyword is a small
minority of the clips, as in the real data. Voices are split: validation and test clips are
spoken only by voices never heard in training. Output:

    OUT/<word>/<speaker>_nohash_<n>.wav     16 kHz mono PCM16 clips
    OUT/validation_list.txt, OUT/testing_list.txt
    OUT/_background_noise_/*.wav            30-second noise recordings (for augmentation)
    OUT/stream_demo.wav, stream_demo.txt    test clips in a row, the keyword in the middle
    OUT/corpus.json                         the generation settings

The same seed gives byte-identical files (each corpus made in a fresh process: see
:mod:`kdlab.speech.espeak`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kdlab.data.audio import resample
from kdlab.speech.audio import coloured_noise, mix_at_snr, trim_silence, write_audio
from kdlab.speech.espeak import engine, voice_variants, word_lists

log = logging.getLogger("kdlab.data")
SAMPLE_RATE = 16000
SPEECH_COMMANDS_WORDS = [
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
    "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop",
    "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
]
# words that share sounds with "sheila": negatives that make the task harder than silence vs speech
CONFUSABLE = ["she", "shale", "shield", "sheet", "sealer", "sailor", "layla", "delia", "shelley", "shiela's",
              "leila", "sheena", "tequila", "shy", "shell", "seal", "feeler", "healer", "she'll", "a"]


def vocabulary(keyword: str, rng: np.random.Generator, common: int = 400) -> list[str]:
    top_n_list = word_lists()

    words = [w for w in top_n_list("en", 3000) if w.isalpha() and len(w) > 1]
    picked = list(rng.choice(words, size=min(common, len(words)), replace=False))
    vocab = dict.fromkeys(SPEECH_COMMANDS_WORDS + CONFUSABLE + picked)
    vocab.pop(keyword, None)
    return [w for w in vocab if w.replace("'", "").isalpha()]


def _speak(word: str, voice: str, rng: np.random.Generator, max_len: int) -> np.ndarray:
    eng = engine()
    # pitch 35-85 and range 20-70: espeak-ng 1.52 crashes (SIGSEGV) on some voices with a low
    # pitch and a wide range (e.g. en+rob at pitch 30, range 82)
    rate = int(rng.integers(120, 260))
    while True:
        audio = eng.synth(word, voice, rate=rate, pitch=int(rng.integers(35, 86)), pitch_range=int(rng.integers(20, 71)),
                          seed=int(rng.integers(2**31)))
        audio = trim_silence(resample(audio, eng.sample_rate, SAMPLE_RATE))
        if len(audio) <= max_len or rate >= 450:
            return audio[:max_len]
        rate += 60


def _babble(voices: list[str], words: list[str], rng: np.random.Generator, seconds: float) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    for _ in range(int(seconds * 8)):
        w = _speak(str(rng.choice(words)), str(rng.choice(voices)), rng, SAMPLE_RATE)
        start = int(rng.integers(0, max(1, n - len(w))))
        out[start : start + len(w)] += w[: n - start]
    return out / (np.abs(out).max() + 1e-9)


def speaker_id(voice: str) -> str:
    return hashlib.sha1(voice.encode()).hexdigest()[:8]


def generate(out: str | Path, keyword: str = "sheila", *, clips: int = 8000, keyword_fraction: float = 0.05,
             seed: int = 0, held_out_voices: float = 0.15, snr_db: tuple[float, float] = (0.0, 25.0),
             noise_prob: float = 0.9, progress: bool = True) -> dict:
    """Write the corpus under ``out`` and return its summary (counts per split)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    voices = voice_variants("en")
    rng.shuffle(voices)
    n_held = max(1, int(round(len(voices) * held_out_voices)))
    split_voices = {"test": voices[:n_held], "val": voices[n_held : 2 * n_held], "train": voices[2 * n_held :]}
    words = vocabulary(keyword, rng)
    length = SAMPLE_RATE

    noise_dir = out / "_background_noise_"
    noises = {c: coloured_noise(30 * SAMPLE_RATE, rng, c) * 0.5 for c in ("white", "pink", "brown")}
    noises["babble"] = _babble(split_voices["train"], words, rng, 30.0) * 0.5
    for name, noise in noises.items():
        write_audio(noise_dir / f"{name}_noise.wav", noise, SAMPLE_RATE)
    noise_list = list(noises.values())

    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    counters: dict[tuple[str, str], int] = {}
    split_names = np.array(["train", "val", "test"])
    split_of_clip = rng.choice(split_names, size=clips, p=[0.7, 0.15, 0.15])
    is_kw = rng.random(clips) < keyword_fraction
    for i in tqdm(range(clips), desc="kws corpus", unit="clip", disable=not progress, mininterval=0.5):
        split = str(split_of_clip[i])
        voice = str(rng.choice(split_voices[split]))
        word = keyword if is_kw[i] else str(rng.choice(words))
        speech = _speak(word, voice, rng, int(length * 0.95)) * float(rng.uniform(0.3, 1.0))
        clip = np.zeros(length, np.float32)
        start = int(rng.integers(0, length - len(speech) + 1))
        clip[start : start + len(speech)] = speech
        if rng.random() < noise_prob:
            noise = noise_list[int(rng.integers(len(noise_list)))]
            offset = int(rng.integers(0, len(noise) - length))
            clip = mix_at_snr(clip, noise[offset : offset + length], float(rng.uniform(*snr_db)))
        spk = speaker_id(voice)
        k = counters.get((word, spk), 0)
        counters[(word, spk)] = k + 1
        rel = f"{word}/{spk}_nohash_{k}.wav"
        write_audio(out / rel, clip, SAMPLE_RATE)
        lists[split].append(rel)
        if not progress and (i + 1) % max(1, clips // 10) == 0:
            log.info("kws corpus: %d/%d clips", i + 1, clips)
    (out / "validation_list.txt").write_text("".join(f"{r}\n" for r in lists["val"]))
    (out / "testing_list.txt").write_text("".join(f"{r}\n" for r in lists["test"]))
    demo = _stream_demo(out, lists["test"], keyword, rng)
    summary = {
        "keyword": keyword, "seed": seed, "clips": clips, "keyword_fraction": keyword_fraction,
        "sample_rate": SAMPLE_RATE, "snr_db": list(snr_db), "noise_prob": noise_prob,
        "splits": {s: {"clips": len(v), "keyword": sum(r.startswith(f"{keyword}/") for r in v),
                       "voices": split_voices[s]} for s, v in lists.items()},
        "words": len(words) + 1, "stream_demo": demo,
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _stream_demo(out: Path, test: list[str], keyword: str, rng: np.random.Generator, n: int = 9) -> dict:
    """Test clips in a row with one keyword clip in the middle: input for ``kdlab kws-stream``."""
    import soundfile

    kws = [r for r in test if r.startswith(f"{keyword}/")]
    others = [r for r in test if not r.startswith(f"{keyword}/")]
    if not kws or len(others) < n - 1:
        return {}
    chosen = [str(x) for x in rng.choice(others, size=n - 1, replace=False)]
    chosen.insert(n // 2, str(rng.choice(kws)))
    audio = np.concatenate([soundfile.read(str(out / r), dtype="float32")[0] for r in chosen])
    write_audio(out / "stream_demo.wav", audio, SAMPLE_RATE)
    (out / "stream_demo.txt").write_text("".join(f"{i:.1f}-{i + 1:.1f} s\t{r}\n" for i, r in enumerate(chosen)))
    return {"file": "stream_demo.wav", "keyword_at_seconds": [n // 2, n // 2 + 1]}
