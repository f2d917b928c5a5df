"""Probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer", ECCV, arXiv:1803.10837).

Each sample's conditional distribution over the other samples of the batch, from cosine
similarities shifted to [0, 1], is matched to the teacher's:

    K_ij = (cos(e_i, e_j) + 1) / 2,   P_ij = K_ij / sum_j K_ij
    loss = weight * mean_ij P^t_ij log((P^t_ij + eps) / (P^s_ij + eps))

Weight 30000 as in RepDistiller's CIFAR-100 runs; eps 1e-7. Loss term ``pkt``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab.methods.relations import RelationConfig, RelationMethod


@attrs.frozen(kw_only=True)
class PKTConfig(RelationConfig):
    weight: float = field(default=30000.0, validator=v.ge(0))


def _conditional(e: torch.Tensor, eps: float) -> torch.Tensor:
    e = F.normalize(e.flatten(1), dim=1, eps=eps)
    k = (e @ e.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, cfg=None, eps: float = 1e-7) -> torch.Tensor:
    p_s, p_t = _conditional(student, eps), _conditional(teacher, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class PKT(RelationMethod):
    name, term, config_class = "pkt", "pkt", PKTConfig
    loss = staticmethod(pkt_loss)
