"""The one audio reader (soundfile) and resampling (torchaudio), for training and inference alike."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from kdlab.engine.errors import KdlabError

log = logging.getLogger("kdlab")


def read_audio(path: str | Path, sample_rate: int, *, resample_to_rate: bool = False, where: str = "",
               truncated: str = "warn") -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sample_rate``. A file at another rate is resampled
    when ``resample_to_rate``, an error otherwise; an unreadable or empty file, or one with a NaN
    or infinite sample, is an error naming the file (and ``where`` it was listed). A file shorter
    than its header says (a copy cut off) is read as far as it goes with a warning, or is an
    error with ``truncated = "error"``."""
    prefix = f"{where}: " if where else ""
    try:
        with soundfile.SoundFile(str(path)) as f:
            data, rate, log_text = f.read(dtype="float32", always_2d=True), f.samplerate, f.extra_info
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise KdlabError(f"{prefix}{path}: unreadable audio ({exc})") from exc
    # libsndfile notes a data chunk longer than the file as "data : 32000 (should be 15978)"
    cut = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", log_text, re.M)
    if cut and int(cut.group(2)) < int(cut.group(1)):
        message = (f"{prefix}{path}: truncated: the header declares {cut.group(1)} bytes of audio, "
                   f"the file holds {cut.group(2)}")
        if truncated == "error":
            raise KdlabError(message)
        log.warning("%s; reading what is there", message)
    if data.shape[0] == 0:
        raise KdlabError(f"{prefix}{path}: empty audio")
    bad = ~np.isfinite(data).all(axis=1)
    if bad.any():  # a float WAV can hold NaN or infinity; every model output would be NaN
        first = int(np.argmax(bad))
        raise KdlabError(f"{prefix}{path}: {int(bad.sum())} samples are NaN or infinite (the first at "
                         f"{first / rate:.3f} s); not audio a model can read")
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
