"""Class-centre geometry preservation (seed 004: distillation that preserves the geometry of
the feature space).

For a tapped feature layer of teacher and student (maps and token sequences are averaged to
vectors), compute each class's centre, build each model's cosine-similarity matrix between class
centres, and penalise the difference of the two matrices (mean squared or absolute difference
over the off-diagonal entries). Widths may differ: only C x C matrices are compared.

Centres: with ``momentum = 0`` (default) they come from the current batch alone, over the classes
present in it; classes absent from the batch are left out, and a batch with fewer than two
classes contributes zero. With ``momentum`` in (0, 1) the centres are running estimates:
``m * previous + (1 - m) * batch`` for classes in the batch (gradient through the batch part),
the previous estimate (no gradient) for classes seen earlier but absent now. The running
estimates are checkpointed. Loss term: ``geometry``.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import hookimpl
from kdlab.methods.feature_pairs import (FeaturePairConfig, as_vector, feature_pair_requirements, paired)

NAME = "geometry"


@attrs.frozen(kw_only=True)
class GeometryConfig(FeaturePairConfig):
    momentum: float = field(default=0.0, validator=[v.ge(0), v.lt(1)])
    distance: Literal["mse", "l1"] = "mse"


def class_centres(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, D) mean feature per class and a (C,) mask of the classes present."""
    onehot = F.one_hot(labels, num_classes).to(features.dtype)  # (N, C)
    counts = onehot.sum(0)
    centres = onehot.t() @ features / counts.clamp(min=1)[:, None]
    return centres, counts > 0


def similarity_matrix(centres: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every pair of centres (C x C)."""
    unit = F.normalize(centres, dim=1)
    return unit @ unit.t()


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    return matrix[~torch.eye(n, dtype=torch.bool, device=matrix.device)]


def geometry_distance(student_centres: torch.Tensor, teacher_centres: torch.Tensor, *, distance: str = "mse") -> torch.Tensor:
    """Distance between the two centre-similarity matrices over off-diagonal entries."""
    diff = off_diagonal(similarity_matrix(student_centres) - similarity_matrix(teacher_centres))
    return diff.pow(2).mean() if distance == "mse" else diff.abs().mean()


def geometry_loss(student_feats: torch.Tensor, teacher_feats: torch.Tensor, labels: torch.Tensor, *,
                  num_classes: int, distance: str = "mse") -> torch.Tensor:
    """Per-batch geometry loss over the classes present in the batch (zero if fewer than two)."""
    s, present = class_centres(as_vector(student_feats).float(), labels, num_classes)
    t, _ = class_centres(as_vector(teacher_feats).float(), labels, num_classes)
    if int(present.sum()) < 2:
        return s.sum() * 0.0
    return geometry_distance(s[present], t[present], distance=distance)


class Geometry:
    def __init__(self, config):
        self.config = config
        self.student_centres: torch.Tensor | None = None  # running estimates (momentum > 0)
        self.teacher_centres: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None

    config_class = GeometryConfig

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"geometry"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        # class centres over the whole global batch, as in one process
        s_feat, t_feat = (stage.gather(f) for f in paired(cfg, student_out, teacher_outs))
        targets = stage.gather(batch.targets)
        num_classes = stage.data.num_classes
        if cfg.momentum == 0:
            return {"geometry": geometry_loss(s_feat, t_feat, targets, num_classes=num_classes,
                                              distance=cfg.distance)}
        s, present = class_centres(as_vector(s_feat).float(), targets, num_classes)
        t, _ = class_centres(as_vector(t_feat).float(), targets, num_classes)
        if self.seen is None:
            self.student_centres, self.teacher_centres = s.detach().clone(), t.detach().clone()
            self.seen = present.clone()
        m = cfg.momentum
        blend = present & self.seen  # classes with a previous estimate and a batch estimate
        new_only = present & ~self.seen
        s_now = torch.where(blend[:, None], m * self.student_centres + (1 - m) * s,
                            torch.where(new_only[:, None], s, self.student_centres))
        t_now = torch.where(blend[:, None], m * self.teacher_centres + (1 - m) * t,
                            torch.where(new_only[:, None], t, self.teacher_centres))
        self.seen = self.seen | present
        self.student_centres, self.teacher_centres = s_now.detach(), t_now.detach()
        if int(self.seen.sum()) < 2:
            return {"geometry": s.sum() * 0.0}
        return {"geometry": geometry_distance(s_now[self.seen], t_now[self.seen], distance=cfg.distance)}

    @hookimpl
    def kdlab_state_dict(self, stage):
        if self.seen is None:
            return None
        return {"student": self.student_centres, "teacher": self.teacher_centres, "seen": self.seen}

    @hookimpl
    def kdlab_load_state_dict(self, stage, state):
        self.student_centres, self.teacher_centres, self.seen = state["student"], state["teacher"], state["seen"]
