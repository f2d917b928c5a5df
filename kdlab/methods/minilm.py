"""MiniLM-style relation distillation (Wang et al. 2020, "MiniLM"; 2021, "MiniLMv2: Multi-Head
Self-Attention Relation Distillation"): for each tapped pair of (batch, length, width) features,
say the query, key or value projections of a transformer layer, both are split into the same
number of relation heads and each head's scaled dot-product relation between positions,
softmax(X_h X_h^T / sqrt(d_h)), is matched by KL(teacher || student). The relations are
(length x length) whatever the widths, so a narrow student, or a convolutional one (tap its
blocks), learns from a wide teacher without a projection.

Relations are causal (a position relates to itself and the ones before, as in a decoder's
attention) and skip padding. ``pairs`` maps a student tap alias to a teacher tap alias.
Loss term: ``minilm`` (mean over pairs, heads and positions).
"""

from __future__ import annotations

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import KdlabError, Requirements, hookimpl


@attrs.frozen(kw_only=True)
class MiniLMConfig:
    pairs: dict[str, str] = field(validator=v.min_len(1))  # student tap alias -> teacher tap alias
    relation_heads: int = field(default=4, validator=v.ge(1))


def relations(x: torch.Tensor, heads: int, valid: torch.Tensor) -> torch.Tensor:
    """Log-softmax relations (batch, heads, L, L) of (batch, L, width) features, causal and
    restricted to ``valid`` (batch, L) positions."""
    b, n, d = x.shape
    h = x.float().view(b, n, heads, d // heads).transpose(1, 2)
    scores = h @ h.transpose(-1, -2) / (d // heads) ** 0.5
    allowed = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()[None, None] & valid[:, None, None, :]
    return torch.log_softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)


def minilm_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, *, heads: int,
                divisor: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over heads and valid query positions of KL(teacher relation || student relation)
    (``divisor`` replaces the count of valid positions: :meth:`~kdlab.engine.types.Stage.mean_divisor`)."""
    s, t = relations(student, heads, valid), relations(teacher, heads, valid)
    kl = (t.exp() * (t - s)).nan_to_num(0.0).sum(-1)  # masked entries: 0 * (-inf - -inf)
    per_head = (kl * valid[:, None, :]).sum() / heads
    return per_head / (valid.sum().clamp(min=1) if divisor is None else divisor)


class MiniLM:
    config_class = MiniLMConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"minilm"}, student_taps=tuple(config.pairs),
                            teacher_taps=((0, tuple(config.pairs.values())),), tap_keys=("pairs", "pairs"))

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        text = stage.data.extra.get("text")
        valid = batch.inputs != text.pad_id if text is not None else torch.ones_like(batch.inputs, dtype=torch.bool)
        losses, divisor = [], stage.mean_divisor(valid)
        for s_alias, t_alias in cfg.pairs.items():
            s, t = student_out.features[s_alias], teacher_outs[0].features[t_alias]
            for x, who in ((s, s_alias), (t, t_alias)):
                if x.ndim != 3 or x.shape[-1] % cfg.relation_heads:
                    raise KdlabError(f"stages.{stage.name}.methods.minilm: tap '{who}' gives shape {tuple(x.shape)}; "
                                     f"needs (batch, length, width) with width divisible by relation_heads = "
                                     f"{cfg.relation_heads}")
            losses.append(minilm_loss(s, t, valid, heads=cfg.relation_heads, divisor=divisor))
        return {"minilm": sum(losses) / len(losses)}
