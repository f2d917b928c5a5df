"""Language modelling: next-token cross-entropy on the valid targets of a batch (the text data
set marks padding, and prompts when only responses are trained, with -1). The baseline every
language-model student is compared with. Loss term: ``lm``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import KdlabError, ModelOutput, Requirements, hookimpl
from kdlab.methods.vocab_chunks import RowsTerm


@attrs.frozen(kw_only=True)
class LMConfig:
    label_smoothing: float = field(default=0.0, validator=[v.ge(0), v.lt(1)])


def lm_loss(logits: torch.Tensor | ModelOutput, targets: torch.Tensor, *, label_smoothing: float = 0.0,
            divisor: torch.Tensor | None = None, chunk: int | None = None, defer: bool = False) -> torch.Tensor:
    """Mean cross-entropy over the tokens whose target is >= 0; logits (B, L, V) or a model's
    output (a language model's hidden states: computed in chunks, :mod:`kdlab.methods.vocab_chunks`),
    targets (B, L). Zero, with a gradient path, when there is none (a batch of prompts cut at the
    context end). ``divisor`` replaces the local token count (``stage.mean_divisor``: the global
    batch's under --nproc). ``defer``: return it as a :class:`~kdlab.methods.vocab_chunks.RowsTerm`
    (what ``kdlab_loss_terms`` returns, so that the core computes it with the step's other
    vocabulary losses in one pass)."""
    out = logits if isinstance(logits, ModelOutput) else ModelOutput(logits=logits)
    flat = targets.flatten()

    def per_token(logits, rows):
        return F.cross_entropy(logits.float(), flat[rows], label_smoothing=label_smoothing, reduction="none")

    term = RowsTerm(out, targets >= 0, per_token, divisor, chunk)
    return term if defer else term.value()


def check_token_logits(logits: torch.Tensor | ModelOutput, targets: torch.Tensor, plugin: str) -> None:
    shape = logits.logits_shape if isinstance(logits, ModelOutput) else tuple(logits.shape)
    if len(shape) != 3 or tuple(targets.shape) != shape[:2]:
        raise KdlabError(f"{plugin}: needs a language model's logits (batch, length, vocab) and per-token targets "
                         f"(the text data set); got logits {shape}, targets {tuple(targets.shape)}")


class LM:
    data_kinds = {"text"}  # kdlab validate refuses it on other data
    config_class = LMConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(terms={"lm"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out):
        check_token_logits(student_out, batch.targets, "methods.lm")
        return {"lm": lm_loss(student_out, batch.targets, label_smoothing=self.config.label_smoothing,
                              divisor=stage.mean_divisor(batch.targets >= 0), defer=True)}
