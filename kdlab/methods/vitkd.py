"""ViTKD (Yang, Li, Zeng, Zhang, Li, Li 2022, "ViTKD: Practical Guidelines for ViT Feature
Knowledge Distillation", arXiv:2209.02432), for transformer students.

Shallow layers are *mimicked*, the deep layer is *generated*: each of the student's shallow
token maps goes through its own linear layer to the teacher's width and is matched to the
teacher's by summed squared error; the deep one, projected likewise, has a share ``mask_ratio``
of its tokens replaced by a learned mask token (a random set per sample), is reshaped to its
patch grid and passed through two 3x3 convolutions (the generator), and is matched to the
teacher's at the masked tokens only:

    low  = alpha * sum_l ||A_l(S_l) - T_l||^2 / N
    high = beta  * ||mask * G(mask_tokens(A(S_deep))) - mask * T_deep||^2 / (N * mask_ratio)
    loss = low + high

Defaults, modules and their order of random draws as the authors' code (yzd-v/cls_KD,
mmcls/models/dis_losses/vitkd.py at 1e5d48f: alpha 3e-5, beta 3e-6, mask ratio 0.5; the linear
layers only when the widths differ; checked against it, values and gradients with all its
modules, the same random mask from the same seed: benchmarks/parity_peers.py). The authors tap
the first two blocks (without the class token) and the last. Token maps (N, T, D) are used as
they are, a leading class token dropped when T - 1 is a square; feature maps (N, C, H, W) are
read as H*W tokens of width C, so the method also runs on CNN taps. Loss term ``vitkd``.
"""

from __future__ import annotations

import math

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import KdlabError, Requirements, hookimpl
from kdlab.engine.recipe import ALIASES
from kdlab.methods.feature_pairs import patch_tokens

NAME = "vitkd"


@attrs.frozen(kw_only=True)
class ViTKDConfig:
    low_student: ALIASES = ("low0", "low1")  # the student's shallow token taps (mimicked)
    low_teacher: ALIASES = ("low0", "low1")  # the teacher's, paired
    student: str = "feat"  # the student's deep token tap (generated)
    teacher: str = "feat"  # the teacher's
    teacher_index: int = field(default=0, validator=v.ge(0))
    alpha: float = field(default=3e-5, validator=v.ge(0))
    beta: float = field(default=3e-6, validator=v.ge(0))
    mask_ratio: float = field(default=0.5, validator=[v.gt(0), v.lt(1)])


def _aliases(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def as_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, T, D) patch tokens (a leading class token dropped), or a map's positions as tokens."""
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    if x.dim() != 3:
        raise KdlabError(f"ViTKD needs token sequences (N, T, D) or maps (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
    return patch_tokens(x)


class ViTKDModules(nn.Module):
    """The alignment layers, the mask token and the generator (the authors' module layout)."""

    def __init__(self, student_dim: int, teacher_dim: int, low: int):
        super().__init__()
        if student_dim != teacher_dim:
            self.align2 = nn.ModuleList([nn.Linear(student_dim, teacher_dim) for _ in range(low)])
            self.align = nn.Linear(student_dim, teacher_dim)
        else:
            self.align2 = None
            self.align = None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, teacher_dim))
        self.generation = nn.Sequential(nn.Conv2d(teacher_dim, teacher_dim, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(teacher_dim, teacher_dim, 3, padding=1))


def vitkd_loss(modules: ViTKDModules, low_s: list[torch.Tensor], low_t: list[torch.Tensor], high_s: torch.Tensor,
               high_t: torch.Tensor, *, alpha: float = 3e-5, beta: float = 3e-6, mask_ratio: float = 0.5) -> torch.Tensor:
    """Token tensors (N, T, D); draws one (N, T) uniform tensor for the mask, as the authors' code."""
    b = high_s.shape[0]
    if modules.align2 is not None:
        low_s = [a(x) for a, x in zip(modules.align2, low_s)]
    low = sum((s - t).pow(2).sum() for s, t in zip(low_s, low_t)) / b * alpha

    x = modules.align(high_s) if modules.align is not None else high_s
    n, length, dim = x.shape
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)  # per sample: the smallest `keep` are kept
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    kept = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, restore)[..., None]  # 1 where masked
    x = torch.cat([kept, modules.mask_token.expand(n, length - keep, -1)], dim=1)
    x = torch.gather(x, 1, restore[..., None].expand(-1, -1, dim))
    side = math.isqrt(length)
    if side * side != length:
        raise KdlabError(f"ViTKD's generator needs a square grid of tokens, got {length}")
    x = modules.generation(x.reshape(n, side, side, dim).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
    high = (x * mask - high_t * mask).pow(2).sum() / b * beta / mask_ratio
    return low + high


class ViTKD:
    config_class = ViTKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        low_s, low_t = _aliases(config.low_student), _aliases(config.low_teacher)
        problems = []
        if len(low_s) != len(low_t):
            problems.append(("low_student", f"low_student and low_teacher must pair up, got {low_s} and {low_t}"))
        if stage.teachers and config.teacher_index >= len(stage.teachers):
            problems.append(("teacher_index", f"{config.teacher_index}, but the stage has {len(stage.teachers)} teacher(s)"))
        return Requirements(teachers=1, terms={NAME}, student_taps=tuple(dict.fromkeys([*low_s, config.student])),
                            teacher_taps=((config.teacher_index, tuple(dict.fromkeys([*low_t, config.teacher]))),),
                            problems=tuple(problems))

    def _tokens(self, student_out, teacher_outs):
        cfg = self.config
        s, t = student_out.features, teacher_outs[cfg.teacher_index].features
        low_s = [as_tokens(s[a]).float() for a in _aliases(cfg.low_student)]
        low_t = [as_tokens(t[a]).float() for a in _aliases(cfg.low_teacher)]
        return low_s, low_t, as_tokens(s[cfg.student]).float(), as_tokens(t[cfg.teacher]).float()

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        low_s, low_t, high_s, high_t = self._tokens(*probe)
        for (a, s), (b, t) in zip(zip([*_aliases(cfg.low_student), cfg.student], [*low_s, high_s]),
                                  zip([*_aliases(cfg.low_teacher), cfg.teacher], [*low_t, high_t])):
            if s.shape[1] != t.shape[1] or s.shape[2] != high_s.shape[2] or t.shape[2] != high_t.shape[2]:
                raise KdlabError(f"stages.{stage.name}.methods.{NAME}: student tap '{a}' is {tuple(s.shape[1:])} tokens x "
                                 f"width, teacher tap '{b}' {tuple(t.shape[1:])}; ViTKD pairs equal token counts, "
                                 "one width per model")
        return {NAME: ViTKDModules(high_s.shape[2], high_t.shape[2], len(low_s))}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        low_s, low_t, high_s, high_t = self._tokens(student_out, teacher_outs)
        return {NAME: vitkd_loss(stage.extra[NAME], low_s, low_t, high_s, high_t, alpha=cfg.alpha, beta=cfg.beta,
                                 mask_ratio=cfg.mask_ratio)}
