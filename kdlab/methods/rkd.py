"""Relational knowledge distillation (Park, Kim, Lu, Cho 2019, "Relational Knowledge
Distillation", CVPR, arXiv:1904.05068): the student keeps the teacher's distances between pairs
of samples and angles between triplets.

    psi_D(i, j) = ||e_i - e_j|| / mu,   mu = mean of the non-zero distances in the batch
    psi_A(i, j, k) = cos of the angle at j between e_i and e_k
    loss = distance_weight * huber(psi_D^s, psi_D^t) + angle_weight * huber(psi_A^s, psi_A^t)

with the smooth-L1 (Huber, delta 1) mean over all pairs and triplets. Weights 25 and 50 as in the
paper and RepDistiller. Embeddings: the ``emb`` taps by default (maps are flattened). Loss term
``rkd``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab.methods.relations import RelationConfig, RelationMethod


@attrs.frozen(kw_only=True)
class RKDConfig(RelationConfig):
    distance_weight: float = field(default=25.0, validator=v.ge(0))
    angle_weight: float = field(default=50.0, validator=v.ge(0))


def _distances(e: torch.Tensor) -> torch.Tensor:
    # from the Gram matrix, clamped before the square root: torch.cdist's gradient is not finite
    # at the zero distances of the diagonal
    gram = e @ e.t()
    sq = gram.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(1e-12).sqrt()
    d = d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))
    positive = d[d > 0]
    return d / positive.mean() if positive.numel() else d


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[j, i] = unit(e_i - e_j)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # [j, i, k]: cos of the angle at j


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, cfg: RKDConfig) -> torch.Tensor:
    s, t = student.flatten(1), teacher.flatten(1)
    with torch.no_grad():
        d_t = _distances(t)
    loss = cfg.distance_weight * F.smooth_l1_loss(_distances(s), d_t)
    if not cfg.angle_weight:  # the angle term is batch^3: skipped when it counts for nothing
        return loss
    with torch.no_grad():
        a_t = _angles(t)
    return loss + cfg.angle_weight * F.smooth_l1_loss(_angles(s), a_t)


class RKD(RelationMethod):
    name, term, config_class = "rkd", "rkd", RKDConfig
    loss = staticmethod(rkd_loss)
