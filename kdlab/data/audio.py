"""The one audio reader (soundfile) and resampling (torchaudio), for training and inference alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from kdlab.engine.errors import KdlabError


def read_audio(path: str | Path, sample_rate: int, *, resample_to_rate: bool = False, where: str = "") -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sample_rate``. A file at another rate is resampled
    when ``resample_to_rate``, an error otherwise; an unreadable or empty file is an error naming
    the file (and ``where`` it was listed)."""
    prefix = f"{where}: " if where else ""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise KdlabError(f"{prefix}{path}: unreadable audio ({exc})") from exc
    if data.shape[0] == 0:
        raise KdlabError(f"{prefix}{path}: empty audio")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        if not resample_to_rate:
            raise KdlabError(f"{prefix}{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
        mono = resample(mono, rate, sample_rate).astype(np.float32)
    return mono


def resample(samples: np.ndarray, orig: int, new: int) -> np.ndarray:
    if orig == new:
        return samples
    return torchaudio.functional.resample(torch.from_numpy(samples), orig, new).numpy()
