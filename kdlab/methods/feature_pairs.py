"""What the representation-level methods share (not a plugin): the config base of a method that
pairs a student tap with a teacher tap, its declared requirements, and shape helpers.

Tapped features come as feature maps (N, C, H, W), token sequences (N, T, D) from transformers,
or vectors (N, D). Written by hand: these few reshapes are specific to bridging tapped layers of
different architectures, and no library call does them.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import KdlabError, Requirements


@attrs.frozen(kw_only=True)
class FeaturePairConfig:
    """Base of the table of a method that compares one student feature with one teacher feature:
    ``student`` and ``teacher`` are tap aliases (``[stages.<s>.taps]``), ``teacher_index`` picks
    the teacher. Subclass it and add the method's own settings."""

    student: str = "emb"  # alias in [stages.<s>.taps.student]
    teacher: str = "emb"  # alias in [stages.<s>.taps.teacher] (or taps.teachers.<teacher>)
    teacher_index: int = field(default=0, validator=v.ge(0))


def feature_pair_requirements(config, stage, terms, minimum: int = 1) -> Requirements:
    """A method comparing student features with those of teacher ``config.teacher_index``
    (``student`` / ``teacher`` alias fields, one alias each or paired lists of at least
    ``minimum``): its teacher, its taps, its terms."""
    teacher = (config.teacher,) if isinstance(config.teacher, str) else tuple(config.teacher)
    student = (config.student,) if isinstance(config.student, str) else tuple(config.student)
    problems = []
    if stage.teachers and config.teacher_index >= len(stage.teachers):
        problems.append(("teacher_index", f"{config.teacher_index}, but the stage has {len(stage.teachers)} teacher(s)"))
    if not isinstance(config.student, str) and (len(student) != len(teacher) or len(student) < minimum):
        problems.append(("student", f"student and teacher must list the same number (>= {minimum}) of tap aliases, "
                                    f"got {list(student)} and {list(teacher)}"))
    problems = tuple(problems)
    return Requirements(teachers=1, terms=terms, student_taps=config.student,
                        teacher_taps=((config.teacher_index, teacher),), problems=problems)


def alias_pairs(cfg) -> list[tuple[str, str]]:
    """The (student, teacher) alias pairs of a config whose ``student`` and ``teacher`` are one
    alias each or paired lists (:data:`kdlab.engine.recipe.ALIASES`)."""
    one = isinstance(cfg.student, str)
    return [(cfg.student, cfg.teacher)] if one else list(zip(cfg.student, cfg.teacher))


def check_equal_widths(cfg, stage, name: str, probe, why: str) -> None:
    """Refuse tap pairs whose student and teacher channels differ (methods that compare
    same-width matrices: FSP, KDSVD), naming the method and the taps; ``probe`` is the
    ``kdlab_extra_modules`` probe (student output, teacher outputs)."""
    student_out, teacher_outs = probe
    for s, t in alias_pairs(cfg):
        cs = as_spatial(student_out.features[s]).shape[1]
        ct = as_spatial(teacher_outs[cfg.teacher_index].features[t]).shape[1]
        if cs != ct:
            raise KdlabError(f"stages.{stage.name}.methods.{name}: student tap '{s}' has {cs} channels, "
                             f"teacher tap '{t}' {ct}; {why}")


def patch_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, D) tokens without a leading class token: it is dropped when T - 1 is a square and T
    is not (a ViT's patch grid)."""
    t = tokens.shape[1]
    if math.isqrt(t) ** 2 != t and math.isqrt(t - 1) ** 2 == t - 1:
        return tokens[:, 1:]
    return tokens


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, D) tokens -> (N, D, h, w) map, a class token dropped (:func:`patch_tokens`)."""
    tokens = patch_tokens(tokens)
    n, t, d = tokens.shape
    side = math.isqrt(t)
    if side * side != t:
        raise KdlabError(f"cannot arrange {t} tokens on a square grid")
    return tokens.transpose(1, 2).reshape(n, d, side, side)


def as_map(x: torch.Tensor) -> torch.Tensor:
    """A feature map for a map or token input; vectors stay vectors."""
    return tokens_to_map(x) if x.dim() == 3 else x


def as_spatial(x: torch.Tensor) -> torch.Tensor:
    """Always an (N, C, H, W) map: vectors as 1x1 maps, token sequences on their grid."""
    return x[:, :, None, None] if x.dim() == 2 else as_map(x)


def as_vector(x: torch.Tensor) -> torch.Tensor:
    """(N, D): maps are averaged over space, token sequences over tokens."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    if x.dim() == 3:
        return x.mean(dim=1)
    if x.dim() == 2:
        return x
    return x.flatten(1)


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two maps down to the smaller one's size."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if a.shape[-2:] != size:
        a = F.adaptive_avg_pool2d(a, size)
    if b.shape[-2:] != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def paired(cfg: FeaturePairConfig, student_out, teacher_outs) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's tapped feature and the paired teacher's, as a method's table names them."""
    return student_out.features[cfg.student], teacher_outs[cfg.teacher_index].features[cfg.teacher]


def conv_regressor(student: torch.Tensor, teacher: torch.Tensor, relu: bool) -> nn.Module:
    """The convolutional regressor of RepDistiller (models/util.py ConvReg) from a student map's
    shape to a teacher map's: a 3x3 stride-2 convolution when the student map is twice the
    size, a 4x4 stride-2 transposed one when half, else a convolution whose kernel covers the
    difference (1x1 at equal sizes); then BatchNorm, and ReLU if ``relu`` (FitNets' hint
    regressor; activation boundaries use it without)."""
    s, t = as_spatial(student), as_spatial(teacher)
    (sc, sh, sw), (tc, th, tw) = s.shape[1:], t.shape[1:]
    if sh == 2 * th:
        conv = nn.Conv2d(sc, tc, kernel_size=3, stride=2, padding=1)
    elif 2 * sh == th:
        conv = nn.ConvTranspose2d(sc, tc, kernel_size=4, stride=2, padding=1)
    elif sh >= th and sw >= tw:
        conv = nn.Conv2d(sc, tc, kernel_size=(1 + sh - th, 1 + sw - tw))
    else:
        raise KdlabError(f"no regressor from a {sh}x{sw} student map to a {th}x{tw} teacher map")
    layers = [conv, nn.BatchNorm2d(tc)] + ([nn.ReLU()] if relu else [])
    return nn.Sequential(*layers)
