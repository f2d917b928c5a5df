"""Neuron selectivity transfer (Huang & Wang 2017, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer", arXiv:1707.01219): each channel of a feature map is a sample of a
distribution over spatial positions; the student's channel distribution is pulled to the
teacher's by the maximum mean discrepancy with a polynomial kernel k(x, y) = (x . y)^2:

    f = each channel's H*W activations, L2-normalised      (N, C, H*W)
    MMD^2 = mean k(f_t, f_t) + mean k(f_s, f_s) - 2 mean k(f_s, f_t)
    loss = weight * MMD^2

Channel counts may differ (the kernel compares channels pairwise); the larger map of the pair is
average-pooled to the smaller one's size. ``student`` and ``teacher``: one tap alias each, or
paired lists (the loss is the sum over the pairs, as RepDistiller's over its three stage
outputs, feat_s[1:-1] in helper/loops.py). Weight 50 as in RepDistiller's CIFAR-100 script
(scripts/run_cifar_distill.sh, ``-b 50``) and mdistiller's NST.LOSS.FEAT_WEIGHT. Loss term ``nst``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import hookimpl
from kdlab.engine.recipe import ALIASES
from kdlab.methods.feature_pairs import FeaturePairConfig, alias_pairs, as_map, feature_pair_requirements, match_spatial

NAME = "nst"


@attrs.frozen(kw_only=True)
class NSTConfig(FeaturePairConfig):
    student: ALIASES = "feat"  # a tap alias, or a list of them
    teacher: ALIASES = "feat"  # the paired alias(es) of the teacher
    weight: float = field(default=50.0, validator=v.ge(0))


def _poly(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, Ca, D), (N, Cb, D) -> (N, Ca, Cb) of (a_i . b_j)^2."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2)


def nst_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    s, t = match_spatial(as_map(student).float(), as_map(teacher).float())
    s = F.normalize(s.flatten(2), dim=2)
    t = F.normalize(t.flatten(2), dim=2)
    return _poly(t, t).mean() + _poly(s, s).mean() - 2 * _poly(s, t).mean()


class NST:
    config_class = NSTConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"nst"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        teacher = teacher_outs[cfg.teacher_index].features
        loss = sum(nst_loss(student_out.features[s], teacher[t]) for s, t in alias_pairs(cfg))
        return {"nst": cfg.weight * loss}
