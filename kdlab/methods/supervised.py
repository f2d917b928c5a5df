"""Supervised cross-entropy on the hard labels: the baseline every student is compared with.

``classes`` restricts the loss to samples of those classes (the others in a batch are ignored):
a teacher trained so has incomplete information, as in seed 002's multi-teacher setting.
Loss term: ``ce``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import Requirements, hookimpl


@attrs.frozen(kw_only=True)
class SupervisedConfig:
    label_smoothing: float = field(default=0.0, validator=[v.ge(0), v.lt(1)])
    classes: tuple[int, ...] | None = field(default=None, validator=v.optional(v.deep_iterable(v.ge(0))))
    weight: float = field(default=1.0, validator=v.ge(0))  # the term's factor (a method's CE weight, e.g. MLKD's)


def supervised_loss(logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0,
                    classes: tuple[int, ...] | None = None) -> torch.Tensor:
    """Cross-entropy, averaged over the samples whose label is in ``classes`` (all if None;
    zero, with a gradient path, if the batch has none)."""
    if classes is None:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    keep = torch.isin(targets, torch.as_tensor(classes, device=targets.device))
    per_sample = F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction="none")
    return (per_sample * keep).sum() / keep.sum().clamp(min=1)


class Supervised:
    config_class = SupervisedConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(terms={"ce"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out):
        cfg = self.config
        ce = supervised_loss(student_out.logits, batch.targets, label_smoothing=cfg.label_smoothing, classes=cfg.classes)
        return {"ce": cfg.weight * ce}
