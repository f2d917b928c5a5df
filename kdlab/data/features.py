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


def spec_augment(mel: torch.Tensor, freq_mask: int, time_mask: int, masks: int = 1, *,
                 generator: torch.Generator | None = None, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """SpecAugment (frequency and time masking, each ``masks`` times) on (batch, bands, frames),
    independently per example; masked cells take the example's mean.

    Draws come from ``generator`` (torch's global generator if None). ``rows = (n, first)``: ``mel``
    holds rows ``first ..`` of a batch of ``n``; the draws are made for all ``n`` and this share's
    rows are used, so that a batch split over processes is masked as one process masks it."""
    n, first = rows if rows is not None else (len(mel), 0)
    out = mel
    for _ in range(masks):
        if freq_mask:
            out = _mask(out, freq_mask, 1, generator, n, first)
        if time_mask:
            out = _mask(out, time_mask, 2, generator, n, first)
    return out


def _mask(mel: torch.Tensor, width: int, axis: int, generator, n: int, first: int) -> torch.Tensor:
    # torchaudio's mask_along_axis_iid draws the same way (a width uniform in [0, width), a start
    # uniform over what is left) but only from the global generator and only for the rows it is
    # given; and it fills with a constant, while the example's mean keeps log-mel statistics (a 0
    # in log-mel is a loud band).
    size = mel.shape[axis]
    value = torch.rand(n, generator=generator)[first : first + len(mel)] * width
    start = torch.rand(n, generator=generator)[first : first + len(mel)] * (size - value)
    value, start = value.to(mel.device), start.to(mel.device)
    pos = torch.arange(size, device=mel.device, dtype=value.dtype)
    lo = start.floor()
    hit = (pos >= lo[:, None]) & (pos < (lo + value.floor())[:, None])  # (rows, size), as torchaudio
    hit = hit[:, :, None] if axis == 1 else hit[:, None, :]
    fill = mel.mean(dim=(1, 2), keepdim=True)
    return torch.where(hit, fill.expand_as(mel), mel)


def normalise_utterance(mel: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance per band over one utterance's frames: (frames, bands)."""
    return (mel - mel.mean(0)) / (mel.std(0) + 1e-5)


def utterance_features(wave: torch.Tensor, logmel: LogMel) -> torch.Tensor:
    """(samples,) audio in [-1, 1] -> (frames, bands) normalised log-mel, as the phoneme data set
    computes it for training and ``kdlab transcribe`` for inference (one code path: no skew)."""
    with torch.no_grad():
        return normalise_utterance(logmel(wave.clamp(-1, 1)).T)
