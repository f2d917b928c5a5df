"""The CTC teacher of seed 000 (part 2): torchaudio's ``wav2vec2_model`` (convolutional feature
encoder with stride 320 = 20 ms, transformer encoder, linear CTC head) on raw 16 kHz audio, trained
from scratch at the recipe's size, or loaded from a Hugging Face ``Wav2Vec2ForCTC`` directory
(``hf_dir``: config.json, weights, vocab.json) through ``import_huggingface_model``, with its
output rows re-ordered to the corpus inventory (blank = the model's pad token).

Returns per-frame logits (batch, frames, classes) and valid lengths; counts its MACs on one second
of audio. Tap point: ``model.encoder``.
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

from kdlab.engine.errors import KdlabError, missing_extra
from kdlab.models.hf_files import from_pretrained


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

    @dim.validator
    def _heads_divide(self, _attr, value):
        if value % self.heads:  # multi-head attention splits the width evenly
            raise ValueError(f"must be divisible by heads ({self.heads}), got {value}")


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
    if not path.is_dir():
        raise KdlabError(f"model.hf_dir: {path} is not a directory (a saved Wav2Vec2ForCTC: config.json, weights, vocab.json)")
    try:
        from transformers import Wav2Vec2ForCTC
    except ImportError as exc:
        raise missing_extra("hf", "transformers", "model.hf_dir") from exc
    vocab_file = path / "vocab.json"
    if not vocab_file.is_file():
        raise KdlabError(f"model.hf_dir: {vocab_file} is missing (the CTC vocabulary of the model)")
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        if not isinstance(vocab, dict):
            raise ValueError("another JSON value")
    except (ValueError, UnicodeDecodeError) as exc:
        raise KdlabError(f"model.hf_dir: {vocab_file}: not a JSON object of token -> id ({exc})") from exc
    hf = from_pretrained(Wav2Vec2ForCTC, path, "model.hf_dir")
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


def build(config: Wav2Vec2Config, data) -> Wav2Vec2CTC:
    if config.hf_dir:
        return Wav2Vec2CTC(wav2vec2_from_hf(config.hf_dir, data.classes))
    return Wav2Vec2CTC(wav2vec2_from_scratch(config, data.num_classes))


ARCH = (Wav2Vec2Config, build)  # the `kdlab.models` entry point: config class, builder
