"""Speech models for CTC phoneme recognition (seed 000, part 2).

* ``wav2vec2_ctc``, the teacher: torchaudio's ``wav2vec2_model`` (convolutional feature encoder
  with stride 320 = 20 ms, transformer encoder, linear CTC head) on raw 16 kHz audio, trained
  from scratch at the recipe's size, or loaded from a Hugging Face ``Wav2Vec2ForCTC`` directory
  (``hf_dir``: config.json, weights, vocab.json) through ``import_huggingface_model``, with its
  output rows re-ordered to the corpus inventory (blank = the model's pad token).
* ``conformer_ctc``, the student: a convolutional subsampling front end (two 3x3 convs, x2 in
  time, so 10 ms log-mel frames become 20 ms outputs, matching the teacher), a linear projection,
  sinusoidal positions, torchaudio's ``Conformer`` blocks, and a linear CTC head.

Both return per-frame logits (batch, frames, classes) and valid lengths, and count their MACs on
one second of audio. Tap points: ``encoder`` (teacher transformer / student Conformer output).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import torch
import torchaudio
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import KdlabError, hookimpl


@attrs.frozen(kw_only=True)
class Wav2Vec2Config:
    conv_dim: int = field(default=128, validator=v.ge(1))  # channels of the 7 feature-encoder convs
    dim: int = field(default=192, validator=v.ge(1))
    layers: int = field(default=4, validator=v.ge(1))
    heads: int = field(default=4, validator=v.ge(1))
    ffn: int = field(default=512, validator=v.ge(1))
    pos_conv_kernel: int = field(default=31, validator=v.ge(1))
    dropout: float = field(default=0.1, validator=[v.ge(0), v.lt(1)])
    hf_dir: str | None = None  # a Hugging Face Wav2Vec2ForCTC directory; the sizes above are then ignored


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


class Wav2Vec2CTC(nn.Module):
    stride = 320

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None):
        # wav2vec2 expects zero-mean, unit-variance audio per utterance (over the valid samples)
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[1], device=wave.device)
        mask = (torch.arange(wave.shape[1], device=wave.device)[None] < lengths[:, None]).to(wave.dtype)
        n = lengths.to(wave.dtype)[:, None]
        mean = (wave * mask).sum(1, keepdim=True) / n
        std = ((((wave - mean) * mask) ** 2).sum(1, keepdim=True) / n).sqrt()
        logits, out_lengths = self.model((wave - mean) / (std + 1e-5) * mask, lengths)
        return logits, out_lengths

    def forward_batch(self, batch):
        return self(batch.extra["wave"], batch.extra["wave_lengths"])

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 16000)


def wav2vec2_from_scratch(config: Wav2Vec2Config, num_classes: int) -> nn.Module:
    if config.dim % config.heads:
        raise KdlabError(f"model.dim {config.dim} must be divisible by model.heads {config.heads}")
    c = config.conv_dim
    groups = math.gcd(16, config.dim)
    return torchaudio.models.wav2vec2_model(
        # layer_norm (per frame), not group_norm (over the whole padded batch): an utterance's
        # outputs then do not depend on what it is batched with, which exact resume and the
        # teacher cache need
        extractor_mode="layer_norm",
        extractor_conv_layer_config=[(c, 10, 5)] + [(c, 3, 2)] * 4 + [(c, 2, 2)] * 2,
        extractor_conv_bias=False, encoder_embed_dim=config.dim, encoder_projection_dropout=config.dropout,
        encoder_pos_conv_kernel=config.pos_conv_kernel, encoder_pos_conv_groups=groups,
        encoder_num_layers=config.layers, encoder_num_heads=config.heads, encoder_attention_dropout=config.dropout,
        encoder_ff_interm_features=config.ffn, encoder_ff_interm_dropout=config.dropout,
        encoder_dropout=config.dropout, encoder_layer_norm_first=False, encoder_layer_drop=0.0,
        aux_num_out=num_classes,
    )


def wav2vec2_from_hf(hf_dir: str, classes: tuple[str, ...]) -> nn.Module:
    """A Hugging Face Wav2Vec2ForCTC directory -> torchaudio model whose CTC rows follow
    ``classes`` (blank first). Needs the optional ``transformers`` package."""
    path = Path(hf_dir)
    try:
        from transformers import Wav2Vec2ForCTC
    except ImportError as exc:
        raise KdlabError("model.hf_dir needs the transformers package: pip install 'kdlab[hf]'") from exc
    vocab_file = path / "vocab.json"
    if not vocab_file.is_file():
        raise KdlabError(f"model.hf_dir: {vocab_file} is missing (the CTC vocabulary of the model)")
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    hf = Wav2Vec2ForCTC.from_pretrained(str(path))
    blank = hf.config.pad_token_id
    missing = [c for c in classes[1:] if c not in vocab]
    if missing:
        raise KdlabError(f"model.hf_dir: the model's vocab.json lacks the corpus phonemes {' '.join(missing)}")
    model = torchaudio.models.wav2vec2.utils.import_huggingface_model(hf)
    rows = torch.tensor([blank] + [vocab[c] for c in classes[1:]])
    head = nn.Linear(model.aux.in_features, len(classes))
    with torch.no_grad():
        head.weight.copy_(model.aux.weight[rows])
        head.bias.copy_(model.aux.bias[rows])
    model.aux = head
    return model


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positions added to the inputs. Written here because torchaudio's
    Conformer has no positional encoding and torch has no stand-alone one."""

    def __init__(self, dim: int, max_len: int = 10000):
        super().__init__()
        pos = torch.arange(max_len)[:, None]
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]


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
        out_lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        x, _ = self.encoder(self.dropout(self.positions(x)), out_lengths.clamp(max=x.shape[1]))
        return self.head(x), out_lengths.clamp(max=x.shape[1])

    def forward_batch(self, batch):
        return self(batch.inputs, batch.extra["input_lengths"])

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 98, self.n_mels)  # 1 s of 10 ms frames (25 ms windows, no padding)


class SpeechModels:
    default_enabled = True

    @hookimpl
    def kdlab_model_configs(self):
        return {"wav2vec2_ctc": Wav2Vec2Config, "conformer_ctc": ConformerConfig}

    @hookimpl
    def kdlab_build_model(self, spec, data):
        if spec.arch == "wav2vec2_ctc":
            cfg = spec.config
            inner = wav2vec2_from_hf(cfg.hf_dir, data.classes) if cfg.hf_dir else wav2vec2_from_scratch(cfg, data.num_classes)
            return Wav2Vec2CTC(inner)
        if spec.arch == "conformer_ctc":
            if spec.config.dim % spec.config.heads:
                raise KdlabError(f"model.dim {spec.config.dim} must be divisible by model.heads {spec.config.heads}")
            return ConformerCTC(spec.config, data.input_shape[-1], data.num_classes)
        return None
