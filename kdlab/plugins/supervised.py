"""Supervised cross-entropy on the hard labels: the baseline every student is compared with.

Loss term: ``ce``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import hookimpl


@attrs.frozen(kw_only=True)
class SupervisedConfig:
    label_smoothing: float = field(default=0.0, validator=[v.ge(0), v.lt(1)])


def supervised_loss(logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


class Supervised:
    @hookimpl
    def kdlab_config_class(self):
        return SupervisedConfig

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out):
        cfg = stage.config_for(self)
        return {"ce": supervised_loss(student_out.logits, batch.targets, label_smoothing=cfg.label_smoothing)}
