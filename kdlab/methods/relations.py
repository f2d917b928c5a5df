"""What the in-batch relation methods share (not a plugin): their config base and their hooks.

Similarity-preserving KD, relational KD, probabilistic knowledge transfer and correlation
congruence all compare how the *samples of a batch* relate to one another in the student and
in the teacher, so the feature dimensions may differ and no adapter is needed. Under ``--nproc``
the features of the whole global batch are gathered first (``stage.gather``), so the loss is
the one a single process computes. Each method is a module with a config class (a subclass of
``RelationConfig`` naming its default weight) and a pure loss function of (student, teacher)
features.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import hookimpl
from kdlab.methods.feature_pairs import feature_pair_requirements


@attrs.frozen(kw_only=True)
class RelationConfig:
    student: str = "emb"  # tap alias in [stages.<s>.taps.student]
    teacher: str = "emb"  # tap alias in [stages.<s>.taps.teacher] (or taps.teachers.<teacher>)
    teacher_index: int = field(default=0, validator=v.ge(0))
    weight: float = field(default=1.0, validator=v.ge(0))


class RelationMethod:
    """Hooks of an in-batch relation method: subclass with ``name``, ``term``, ``config_class``
    and ``loss(student, teacher, cfg)``."""

    name: str
    term: str
    loss: Callable[..., torch.Tensor]

    def __init__(self, config):
        self.config = config

    @classmethod
    def requires(cls, config, stage):
        return feature_pair_requirements(config, stage, {cls.term})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        s = stage.gather(student_out.features[cfg.student].float())
        t = stage.gather(teacher_outs[cfg.teacher_index].features[cfg.teacher].float())
        return {self.term: cfg.weight * type(self).loss(s, t, cfg)}
