"""What the representation-level methods share (not a plugin): the config base of a method that
pairs a student tap with a teacher tap, the stage-start checks of those taps, and shape helpers.

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

from kdlab import KdlabError, Requirements


@attrs.frozen(kw_only=True)
class FeaturePairConfig:
    """Base of the table of a method that compares one student feature with one teacher feature:
    ``student`` and ``teacher`` are tap aliases (``[stages.<s>.taps]``), ``teacher_index`` picks
    the teacher. Subclass it and add the method's own settings."""

    student: str = "emb"  # alias in [stages.<s>.taps.student]
    teacher: str = "emb"  # alias in [stages.<s>.taps.teacher] (or taps.teachers.<teacher>)
    teacher_index: int = field(default=0, validator=v.ge(0))


def feature_pair_requirements(config, stage, terms) -> Requirements:
    """A method comparing student features with those of teacher ``config.teacher_index``
    (``student`` / ``teacher`` alias fields): its teacher, its taps, its terms."""
    teacher = (config.teacher,) if isinstance(config.teacher, str) else tuple(config.teacher)
    problems = ()
    if stage.teachers and config.teacher_index >= len(stage.teachers):
        problems = (("teacher_index", f"{config.teacher_index}, but the stage has {len(stage.teachers)} teacher(s)"),)
    return Requirements(teachers=1, terms=terms, student_taps=config.student,
                        teacher_taps=((config.teacher_index, teacher),), problems=problems)


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, D) tokens -> (N, D, h, w) map; a leading class token is dropped when T - 1 is a
    square and T is not (a ViT's patch grid)."""
    n, t, d = tokens.shape
    if math.isqrt(t) ** 2 != t and math.isqrt(t - 1) ** 2 == t - 1:
        tokens, t = tokens[:, 1:], t - 1
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


def check_taps(stage, plugin_key: str, student: str | None, teacher: str | None) -> None:
    """Fail at stage start, naming the key, when a method's tap aliases are not in the recipe."""
    taps = stage.config.taps
    where = f"stages.{stage.name}.methods.{plugin_key}"
    if student is not None and student not in taps.student:
        raise KdlabError(f"{where}.student: no tap '{student}' in stages.{stage.name}.taps.student "
                         f"(taps: {', '.join(taps.student) or 'none'})")
    for ref in stage.config.teachers if teacher is not None else ():
        paths = taps.for_teacher(ref)
        if teacher not in paths:
            table = f"taps.teachers.{ref}" if ref in taps.teachers else "taps.teacher"
            raise KdlabError(f"{where}.teacher: no tap '{teacher}' in stages.{stage.name}.{table} "
                             f"(taps: {', '.join(paths) or 'none'})")


def check_tap_lists(stage, plugin_key: str, student, teacher, teacher_index: int, minimum: int = 1) -> None:
    """Stage-start checks of a method configured with paired lists of tap aliases."""
    if len(student) != len(teacher) or len(student) < minimum:
        raise KdlabError(f"stages.{stage.name}.methods.{plugin_key}: student and teacher must list the same number "
                         f"(>= {minimum}) of tap aliases, got {list(student)} and {list(teacher)}")
    for s, t in zip(student, teacher):
        check_taps(stage, plugin_key, s, t)
    check_teacher_index(stage, plugin_key, teacher_index)


def check_teacher_index(stage, plugin_key: str, index: int) -> None:
    if index >= len(stage.teachers):
        raise KdlabError(f"stages.{stage.name}.methods.{plugin_key}.teacher_index: {index}, but the stage has "
                         f"{len(stage.teachers)} teacher(s)")


def paired(cfg: FeaturePairConfig, student_out, teacher_outs) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's tapped feature and the paired teacher's, as a method's table names them."""
    return student_out.features[cfg.student], teacher_outs[cfg.teacher_index].features[cfg.teacher]


def check_feature_method(stage, plugin_key: str, config) -> None:
    """Stage-start checks of a method configured with ``student``, ``teacher`` (tap aliases) and
    ``teacher_index``."""
    check_taps(stage, plugin_key, config.student, config.teacher)
    check_teacher_index(stage, plugin_key, config.teacher_index)
