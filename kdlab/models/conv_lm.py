"""A causal convolutional language model: gated convolutions (GCNN, Dauphin et al. 2017,
"Language Modeling with Gated Convolutional Networks"), the CNN student of the transformer -> CNN
setting of seed 003 (after CMKD, Gong et al. 2022).

Token embedding -> ``layers`` residual blocks, each LayerNorm -> causal Conv1d to twice the
width -> GLU -> dropout, added to its input -> LayerNorm -> a linear head tied to the embedding.
A token sees exactly ``receptive_field`` tokens (itself and the ones before): the kernels of the
blocks are sized so that 1 + sum(kernel - 1) equals it. Outside that window it sees nothing,
which is the point of the setting: a dialogue fact stated further back is out of its reach.

Input: token ids (batch, length). Output: next-token logits (batch, length, vocab). Tap points:
``blocks.<i>`` (batch, length, width) and ``norm``.
"""

from __future__ import annotations

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch import nn
from torch.nn import functional as F

from kdlab.engine.heads import HiddenStates


@attrs.frozen(kw_only=True)
class ConvLMConfig:
    width: int = field(default=128, validator=v.ge(1))
    layers: int = field(default=4, validator=v.ge(1))
    receptive_field: int = field(default=16, validator=v.ge(1))  # tokens a prediction can see, itself included
    dropout: float = field(default=0.1, validator=[v.ge(0), v.lt(1)])

    def __attrs_post_init__(self):
        if self.receptive_field < 1 + self.layers:
            raise ValueError(f"receptive_field must be >= layers + 1 = {self.layers + 1} (each block sees at least "
                             "one token back)")


def kernel_sizes(receptive_field: int, layers: int) -> list[int]:
    """Kernel sizes whose stacked causal convolutions see exactly ``receptive_field`` tokens."""
    span, extra = divmod(receptive_field - 1, layers)
    return [1 + span + (i < extra) for i in range(layers)]


class GatedBlock(nn.Module):
    def __init__(self, width: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, 2 * width, kernel)
        self.kernel = kernel
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        h = self.norm(x).transpose(1, 2)
        h = self.conv(F.pad(h, (self.kernel - 1, 0)))  # left padding only: causal
        return x + self.drop(F.glu(h, dim=1).transpose(1, 2))


class ConvLM(nn.Module):
    splits_head = True  # forward(tokens, head=False): the final hidden states and the head's weight

    def __init__(self, vocab: int, context: int, cfg: ConvLMConfig):
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, cfg.width)
        self.blocks = nn.ModuleList(GatedBlock(cfg.width, k, cfg.dropout) for k in kernel_sizes(cfg.receptive_field, cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as in most small language models
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, head: bool = True):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        # a view of the weight: it stays in the forward's graph (DistributedDataParallel's check)
        return self.head(x) if head else HiddenStates(x, self.head.weight[:])

    def example_input(self) -> torch.Tensor:
        """One sequence of the data's length (what ``macs`` counts; per token: divide by it)."""
        return torch.zeros(1, self.context, dtype=torch.long)


def build(config: ConvLMConfig, data) -> ConvLM:
    return ConvLM(data.num_classes, data.input_shape[0], config)


ARCH = (ConvLMConfig, build)  # the `kdlab.models` entry point: config class, builder
