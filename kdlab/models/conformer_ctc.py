"""The CTC student of seed 000 (part 2): a convolutional subsampling front end (two 3x3 convs, x2 in
time, so 10 ms log-mel frames become 20 ms outputs, matching the wav2vec2 teacher), a linear
projection, sinusoidal positions, torchaudio's ``Conformer`` blocks, and a linear CTC head.

Returns per-frame logits (batch, frames, classes) and valid lengths; counts its MACs on one second
of features. Tap point: ``encoder``.
"""

from __future__ import annotations

import math

import attrs
import torch
import torchaudio
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab.engine.errors import KdlabError


@attrs.frozen(kw_only=True)
class ConformerConfig:
    dim: int = field(default=96, validator=v.ge(1))
    layers: int = field(default=3, validator=v.ge(1))
    heads: int = field(default=4, validator=v.ge(1))
    ffn: int = field(default=256, validator=v.ge(1))
    kernel: int = field(default=15, validator=v.ge(1))  # depthwise conv kernel (odd)
    subsample_channels: int = field(default=64, validator=v.ge(1))
    dropout: float = field(default=0.1, validator=[v.ge(0), v.lt(1)])

    @kernel.validator
    def _odd(self, _attr, value):
        if value % 2 == 0:
            raise ValueError(f"must be odd, got {value}")

    @dim.validator
    def _heads_divide(self, _attr, value):
        if value % self.heads:  # multi-head attention splits the width evenly
            raise ValueError(f"must be divisible by heads ({self.heads}), got {value}")


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positions added to the inputs. Written here because torchaudio's
    Conformer has no positional encoding and torch has no stand-alone one."""

    def __init__(self, dim: int, max_len: int = 10000):
        super().__init__()
        self.dim = dim
        self.register_buffer("pe", self._table(max_len), persistent=False)

    def _table(self, length: int) -> torch.Tensor:
        pos = torch.arange(length)[:, None]
        div = torch.exp(torch.arange(0, self.dim, 2) * (-math.log(10000.0) / self.dim))
        pe = torch.zeros(length, self.dim)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : self.dim // 2]
        return pe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > len(self.pe):  # a longer input than any before (a 10-minute clip): grow the table
            self.pe = self._table(x.shape[1]).to(self.pe.device)
        return x + self.pe[: x.shape[1]].to(x.dtype)


class ConformerCTC(nn.Module):
    def __init__(self, config: ConformerConfig, n_mels: int, num_classes: int):
        super().__init__()
        c = config.subsample_channels
        # x2 in time (10 ms -> 20 ms, the teacher's rate), /4 in frequency; time padding keeps
        # the output at ceil(frames / 2)
        self.subsample = nn.Sequential(
            nn.Conv2d(1, c, 3, stride=(2, 2), padding=(1, 0)), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=(1, 2), padding=(1, 0)), nn.ReLU(),
        )
        freq = ((n_mels - 3) // 2 + 1 - 3) // 2 + 1
        self.proj = nn.Linear(c * freq, config.dim)
        self.positions = SinusoidalPositions(config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = torchaudio.models.Conformer(
            input_dim=config.dim, num_heads=config.heads, ffn_dim=config.ffn, num_layers=config.layers,
            depthwise_conv_kernel_size=config.kernel, dropout=config.dropout)
        self.head = nn.Linear(config.dim, num_classes)
        self.n_mels = n_mels

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None):
        if lengths is None:
            lengths = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
        x = self.subsample(feats.unsqueeze(1))  # (B, C, T', F')
        x = self.proj(x.permute(0, 2, 1, 3).flatten(2))
        out_lengths = (torch.div(lengths - 1, 2, rounding_mode="floor") + 1).clamp(max=x.shape[1])
        # torchaudio's Conformer.forward, with the padding mask as wide as the input: its own
        # mask is as wide as the longest length, which is narrower than the input when a batch
        # is padded further (each process's share of a batch, padded to the global batch's longest)
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= out_lengths[:, None]
        x = self.dropout(self.positions(x)).transpose(0, 1)
        for layer in self.encoder.conformer_layers:
            x = layer(x, padding)
        return self.head(x.transpose(0, 1)), out_lengths

    def forward_batch(self, batch):
        return self(batch.inputs, batch.extra["input_lengths"])

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 98, self.n_mels)  # 1 s of 10 ms frames (25 ms windows, no padding)


def build(config: ConformerConfig, data) -> ConformerCTC:
    if config.dim % config.heads:
        raise KdlabError(f"model.dim {config.dim} must be divisible by model.heads {config.heads}")
    return ConformerCTC(config, data.input_shape[-1], data.num_classes)


ARCH = (ConformerConfig, build)  # the `kdlab.models` entry point: config class, builder
