"""Log-mel features (torchaudio's MelSpectrogram), per-utterance normalisation and SpecAugment
masking: the speech feature pipeline shared by training, `kdlab transcribe` and `kdlab kws-stream`."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

LOG_FLOOR = 1e-6


class LogMel(nn.Module):
    """``log(mel + 1e-6)`` of (..., samples) -> (..., n_mels, frames).

    ``center=False``: frame t covers samples [t * hop, t * hop + n_fft), so features of a stream
    computed chunk by chunk equal those of the whole signal (streaming inference relies on it).
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 40, n_fft: int = 400, hop: int = 160):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=hop, n_mels=n_mels, center=False
        )

    def frames(self, samples: int) -> int:
        return 0 if samples < self.n_fft else 1 + (samples - self.n_fft) // self.hop

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wave) + LOG_FLOOR)


def spec_augment(mel: torch.Tensor, freq_mask: int, time_mask: int, masks: int = 1) -> torch.Tensor:
    """SpecAugment (frequency and time masking, each ``masks`` times) on (batch, bands, frames),
    independently per example, through torchaudio; masked cells take the example's mean."""
    out = mel
    for _ in range(masks):
        if freq_mask:
            out = _mask(out, freq_mask, axis=1)
        if time_mask:
            out = _mask(out, time_mask, axis=2)
    return out


def _mask(mel: torch.Tensor, width: int, axis: int) -> torch.Tensor:
    # torchaudio's mask_along_axis_iid fills with a constant; the example's mean keeps log-mel
    # statistics (a 0 in log-mel is a loud band), so the mask value is computed per example.
    fill = mel.mean(dim=(1, 2), keepdim=True)
    masked = torchaudio.functional.mask_along_axis_iid(mel.unsqueeze(1), width, float("nan"), axis + 1).squeeze(1)
    return torch.where(torch.isnan(masked), fill.expand_as(mel), masked)


def normalise_utterance(mel: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance per band over one utterance's frames: (frames, bands)."""
    return (mel - mel.mean(0)) / (mel.std(0) + 1e-5)


def utterance_features(wave: torch.Tensor, logmel: LogMel) -> torch.Tensor:
    """(samples,) audio in [-1, 1] -> (frames, bands) normalised log-mel, as the phoneme data set
    computes it for training and ``kdlab transcribe`` for inference (one code path: no skew)."""
    with torch.no_grad():
        return normalise_utterance(logmel(wave.clamp(-1, 1)).T)
