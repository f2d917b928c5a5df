"""Audio helpers for generating corpora: writing files, trimming silence, noise mixing.
(Reading and resampling, shared with training, are in :mod:`kdlab.data.audio`.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16")


def trim_silence(samples: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > threshold)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples[:0]


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + noise`` scaled so that the speech-to-noise power ratio is ``snr_db``."""
    p_speech = float(np.mean(speech**2)) + 1e-10
    p_noise = float(np.mean(noise**2)) + 1e-10
    return speech + noise * np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))


def coloured_noise(n: int, rng: np.random.Generator, colour: str) -> np.ndarray:
    """White, pink (1/f) or brown (1/f^2) noise of unit peak, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    spectrum = spectrum / {"white": 1.0, "pink": np.sqrt(f), "brown": f}[colour]
    noise = np.fft.irfft(spectrum, n)
    return (noise / (np.abs(noise).max() + 1e-9)).astype(np.float32)
