"""Flow of solution procedure (Yim, Joo, Bae, Kim 2017, "A Gift from Knowledge Distillation:
Fast Optimization, Network Minimization and Transfer Learning", CVPR).

The FSP matrix of two feature maps F1 (N, C1, H, W) and F2 (N, C2, H, W) is their channel
Gram matrix over positions, G = F2 F1^T / (H W), (N, C2, C1): how the features flow from one
layer to the next. The student's FSP matrices of consecutive taps are pulled to the teacher's:

    loss = weight * sum_i mean((G_i^s - G_i^t)^2),   G_i from taps i and i + 1

``student`` and ``teacher`` list the taps (at least two each, the same count; the student's
and the teacher's i-th taps must have the same channels, as in the paper, where the two
networks share stage widths). Of two consecutive maps the larger is average-pooled to the
smaller one's size. As RepDistiller (distiller_zoo/FSP.py, checked against it: values and
gradients, benchmarks/parity_peers.py), whose CIFAR-100 protocol uses FSP only in a first
phase of 30 epochs (``--init_epochs``) that trains the student on this loss alone, then KD:
in kdlab, two stages, the second with ``init = "<first stage>"`` (README, "Methods"). Loss
term ``fsp``.
"""

from __future__ import annotations

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import hookimpl
from kdlab.methods.feature_pairs import as_spatial, check_equal_widths, feature_pair_requirements, match_spatial

NAME = "fsp"


@attrs.frozen(kw_only=True)
class FSPConfig:
    student: tuple[str, ...] = ("feat", "emb")  # consecutive tap aliases of the student
    teacher: tuple[str, ...] = ("feat", "emb")  # the paired aliases of the teacher
    teacher_index: int = field(default=0, validator=v.ge(0))
    weight: float = field(default=1.0, validator=v.ge(0))


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(N, C1, H, W), (N, C2, H', W') -> (N, C2, C1): the mean over positions of second x first,
    the larger map average-pooled to the smaller one's size."""
    first, second = match_spatial(as_spatial(first).float(), as_spatial(second).float())
    a, b = first.flatten(2), second.flatten(2)
    return torch.einsum("nbp,ntp->ntb", a, b) / a.shape[2]


def fsp_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive pairs of the mean squared difference of the FSP matrices."""
    return sum((fsp_matrix(s1, s2) - fsp_matrix(t1, t2)).pow(2).mean()
               for s1, s2, t1, t2 in zip(student, student[1:], teacher, teacher[1:]))


class FSP:
    config_class = FSPConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"fsp"}, minimum=2)

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        # no modules: the widths are checked here, once, where the probe's outputs are seen
        check_equal_widths(self.config, stage, NAME, probe, "FSP compares the matrices of taps of equal widths")
        return {}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        teacher = teacher_outs[cfg.teacher_index].features
        loss = fsp_loss([student_out.features[a] for a in cfg.student], [teacher[a] for a in cfg.teacher])
        return {"fsp": cfg.weight * loss}
