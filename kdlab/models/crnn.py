"""The keyword-spotting CRNN of seed 001: Conv2d over the log-mel -> GRU -> additive attention
over time -> linear classifier, about 70k parameters at the default settings. Every size is a
recipe key, so compressed students are just other settings.

Input: log-mel of shape (batch, n_mels, frames). Tap points: ``conv``, ``gru``, ``attention``
(the pooled vector) and ``head``.
"""

from __future__ import annotations

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab.engine.errors import KdlabError


@attrs.frozen(kw_only=True)
class CRNNConfig:
    conv_channels: int = field(default=8, validator=v.ge(1))
    kernel: tuple[int, int] = (5, 20)  # (mel bands, frames)
    stride: tuple[int, int] = (2, 8)
    hidden: int = field(default=64, validator=v.ge(1))  # GRU hidden size
    gru_layers: int = field(default=2, validator=v.ge(1))
    attention: int = field(default=64, validator=v.ge(1))  # additive-attention energy size
    dropout: float = field(default=0.1, validator=[v.ge(0), v.lt(1)])


class AdditiveAttention(nn.Module):
    """Bahdanau-style pooling: alpha = softmax_t(v^T tanh(W h_t)), output sum_t alpha_t h_t."""

    def __init__(self, hidden: int, energy: int):
        super().__init__()
        self.energy = nn.Sequential(nn.Linear(hidden, energy), nn.Tanh(), nn.Linear(energy, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H)
        alpha = torch.softmax(self.energy(h), dim=1)
        return (alpha * h).sum(dim=1)


class CRNN(nn.Module):
    def __init__(self, config: CRNNConfig, n_mels: int, num_classes: int):
        super().__init__()
        self.config, self.n_mels = config, n_mels
        if n_mels < config.kernel[0]:
            raise KdlabError(f"model.kernel: {config.kernel[0]} mel bands, but the data has {n_mels}")
        self.conv = nn.Sequential(nn.Conv2d(1, config.conv_channels, config.kernel, stride=config.stride), nn.ReLU())
        freq_out = (n_mels - config.kernel[0]) // config.stride[0] + 1
        self.gru = nn.GRU(config.conv_channels * freq_out, config.hidden, num_layers=config.gru_layers,
                          batch_first=True, dropout=config.dropout if config.gru_layers > 1 else 0.0)
        self.attention = AdditiveAttention(config.hidden, config.attention)
        self.head = nn.Linear(config.hidden, num_classes)

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) -> conv features as a sequence (B, steps, channels * freq)."""
        x = self.conv(mel.unsqueeze(1))  # (B, C, F', T')
        return x.flatten(1, 2).transpose(1, 2)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.shape[-1] < self.config.kernel[1]:
            raise KdlabError(f"CRNN input has {mel.shape[-1]} frames, fewer than the kernel's {self.config.kernel[1]}")
        h, _ = self.gru(self.features(mel))
        return self.head(self.attention(h))


def build(config: CRNNConfig, data) -> CRNN:
    if len(data.input_shape) != 2:
        raise KdlabError(f"model.arch crnn needs log-mel input (bands, frames); the data gives {data.input_shape}")
    return CRNN(config, data.input_shape[0], data.num_classes)


ARCH = (CRNNConfig, build)  # the `kdlab.models` entry point: config class, builder
