"""Similarity-preserving KD (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation",
ICCV, arXiv:1907.09682).

Samples that the teacher represents alike should be represented alike by the student:

    G = normalize_rows(F F^T)   for F the (b, features) flattened tap of the batch
    loss = weight * ||G_t - G_s||_F^2 / b^2

Weight 3000 as in RepDistiller's CIFAR-100 runs. Loss term ``sp``; taps default to ``emb``
(RepDistiller uses the last feature map; any tap works, maps are flattened).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab.methods.relations import RelationConfig, RelationMethod


@attrs.frozen(kw_only=True)
class SPConfig(RelationConfig):
    weight: float = field(default=3000.0, validator=v.ge(0))


def sp_loss(student: torch.Tensor, teacher: torch.Tensor, cfg=None) -> torch.Tensor:
    b = student.shape[0]
    g_s = F.normalize(student.flatten(1) @ student.flatten(1).t(), dim=1)
    g_t = F.normalize(teacher.flatten(1) @ teacher.flatten(1).t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


class SP(RelationMethod):
    name, term, config_class = "sp", "sp", SPConfig
    loss = staticmethod(sp_loss)
