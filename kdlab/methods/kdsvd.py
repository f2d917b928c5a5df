"""Knowledge distillation with singular value decomposition (Lee, Kim, Song 2018,
"Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV,
arXiv:1807.06819).

Each tapped map (N, C, H, W) is read as an (H W) x C matrix per sample; its leading right
singular vectors V (C x k), unit-normalised and scaled by the (normalised) singular values,
compress the map. The student's k + 3 leading vectors are aligned to the teacher's k (each
teacher vector takes the student vector of largest |cosine|, with its sign), and the relation
between consecutive taps, a radial-basis kernel between their vectors,

    R_i = exp(-(v_i[:, a] - v_{i-1}[:, b])^2 / 8)          (N, C_i, C_{i-1}, k)

is matched:  loss = weight * sum_{i >= 1} sum (R_i^s - R_i^t)^2 / N.

As RepDistiller (distiller_zoo/KDSVD.py, checked against it: values and gradients,
benchmarks/parity_peers.py): k = 1, the student's vectors scaled by the teacher's singular
values, non-finite entries of the SVD and of the loss set to 0; weight 1 as mdistiller's
KDSVD.LOSS.FEAT_WEIGHT (mdistiller/engine/cfg.py). mdistiller reads the map as a (C H) x W
matrix instead; kdlab keeps the paper's positions x channels. The student's and the teacher's
i-th taps need the same channels (as in the paper); consecutive taps need square maps of any
size. A singular vector's sign is LAPACK's choice, so the loss can differ between linear-algebra
libraries (a property of the method). Loss term ``kdsvd``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import hookimpl
from kdlab.methods.feature_pairs import as_spatial, check_equal_widths, feature_pair_requirements

NAME = "kdsvd"


@attrs.frozen(kw_only=True)
class KDSVDConfig:
    student: tuple[str, ...] = ("feat", "emb")  # tap aliases of the student (at least two)
    teacher: tuple[str, ...] = ("feat", "emb")  # the paired aliases of the teacher
    teacher_index: int = field(default=0, validator=v.ge(0))
    k: int = field(default=1, validator=v.ge(1))
    weight: float = field(default=1.0, validator=v.ge(0))


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def singular_vectors(feature: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) -> (the n leading right singular vectors, unit columns (N, C, n); the n
    leading singular values, normalised (N, n)) of each sample's (H W) x C matrix."""
    x = feature.float().flatten(2).transpose(1, 2)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, vec = _finite(s), _finite(vh.transpose(1, 2))
    return F.normalize(vec[:, :, :n], dim=1), F.normalize(s[:, :n], dim=1)


def _align(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """For each teacher vector the student vector of largest |cosine|, times its sign."""
    cosine = student.transpose(1, 2) @ teacher  # (N, n_s, n_t)
    best = cosine.abs().amax(dim=1, keepdim=True)
    mask = torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
    return student @ mask


def kdsvd_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], k: int = 1) -> torch.Tensor:
    total, previous = 0.0, None
    for f_s, f_t in zip(student, teacher):
        v_t, s_t = singular_vectors(f_t, k)
        v_s, _ = singular_vectors(f_s, k + 3)
        v_s = _align(v_s, v_t)
        v_t, v_s = v_t * s_t[:, None], v_s * s_t[:, None]
        if previous is not None:
            p_s, p_t = previous
            r_s = torch.exp(-(v_s[:, :, None] - p_s[:, None]).pow(2) / 8)
            r_t = torch.exp(-(v_t[:, :, None] - p_t[:, None]).pow(2) / 8)
            total = total + _finite((r_s - r_t.detach()).pow(2)).sum()
        previous = (v_s, v_t)
    return total / student[0].shape[0]


class KDSVD:
    config_class = KDSVDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"kdsvd"}, minimum=2)

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        # no modules: the widths are checked here, once, where the probe's outputs are seen
        check_equal_widths(self.config, stage, NAME, probe, "KDSVD aligns singular vectors of equal length")
        return {}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        teacher = teacher_outs[cfg.teacher_index].features
        loss = kdsvd_loss([as_spatial(student_out.features[a]) for a in cfg.student],
                          [as_spatial(teacher[a]) for a in cfg.teacher], cfg.k)
        return {"kdsvd": cfg.weight * loss}
