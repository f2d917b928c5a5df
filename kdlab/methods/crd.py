"""Contrastive representation distillation with a memory bank, as published (Tian, Krishnan,
Isola 2020, "Contrastive Representation Distillation", ICLR, arXiv:1910.10699).

Student and teacher embeddings pass through learned linear heads to ``feat_dim`` and are
L2-normalised (v_s, v_t). Two memory banks hold one vector per training sample, for the student
(M_s) and the teacher (M_t). For each sample i of the batch, its own bank row is the positive and
``negatives`` rows drawn uniformly from the whole training set are the negatives; the scores are
exp(<v, m> / T) divided by a normalisation constant Z (estimated once, at the first step, as the
mean score times the number of training samples). Each side is an NCE binary classification of
positive against K negatives (noise probability 1 / N):

    h(x) = x / (x + K / N)
    L_NCE = -(1 / B) sum_i [log h(x_i+) + sum_k log(1 - h(x_ik-))]
    loss  = weight * (L_NCE(student anchor vs M_t) + L_NCE(teacher anchor vs M_s))

after which the batch's rows of each bank move to the new embeddings with ``momentum`` and are
renormalised. Defaults are the paper's CIFAR-100 settings (feat_dim 128, 16,384 negatives,
T 0.07, momentum 0.5, weight 0.8). The heads, banks and constants form one extra module: saved in
checkpoints (so a resumed run continues exactly), not exported with the student.

Negatives come from a generator seeded by the recipe seed and the step, so every process of
``--nproc`` draws the same ones; embeddings, indices and bank updates are those of the global
batch (``stage.gather``), so the banks stay identical on every rank. RepDistiller's code draws
negatives only from other classes ("exact" mode); here they are uniform over the training set,
the paper's formulation. Taps: ``emb`` (the pooled embedding) by default. Loss term ``crd``.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import hookimpl
from kdlab.methods.feature_pairs import (FeaturePairConfig, as_vector, feature_pair_requirements, paired)

NAME = "crd"
EPS = 1e-7


@attrs.frozen(kw_only=True)
class CRDConfig(FeaturePairConfig):
    feat_dim: int = field(default=128, validator=v.ge(1))
    negatives: int = field(default=16384, validator=v.ge(1))
    temperature: float = field(default=0.07, validator=v.gt(0))
    momentum: float = field(default=0.5, validator=[v.ge(0), v.lt(1)])
    weight: float = field(default=0.8, validator=v.ge(0))


class CRDHead(nn.Module):
    """The embedding heads, the two memory banks and the two normalisation constants."""

    # the banks and constants are updated from the global batch (stage.gather), the same on
    # every rank: the distributed plugin need not broadcast them after each step
    buffers_synced = True

    def __init__(self, student_dim: int, teacher_dim: int, samples: int, feat_dim: int):
        super().__init__()
        self.embed_s = nn.Linear(student_dim, feat_dim)
        self.embed_t = nn.Linear(teacher_dim, feat_dim)
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(samples, feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(samples, feat_dim) * 2 * bound - bound)
        self.register_buffer("z_s", torch.tensor(-1.0))  # < 0: not estimated yet
        self.register_buffer("z_t", torch.tensor(-1.0))


def nce_loss(scores: torch.Tensor, samples: int) -> torch.Tensor:
    """NCE of normalised scores (B, 1 + K), the positive first, with noise probability 1 / N."""
    k = scores.shape[1] - 1
    noise = k / samples
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


def contrast(anchor: torch.Tensor, memory: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(<anchor_i, memory[rows_ij]> / T): (B, 1 + K)."""
    return torch.exp(torch.einsum("bkf,bf->bk", memory[rows], anchor) / temperature)


@torch.no_grad()
def update_memory(memory: torch.Tensor, index: torch.Tensor, new: torch.Tensor, momentum: float) -> None:
    memory[index] = F.normalize(memory[index] * momentum + new * (1 - momentum), dim=1)


class CRD:
    config_class = CRDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return feature_pair_requirements(config, stage, {"crd"})

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        s, t = paired(cfg, *probe)
        return {NAME: CRDHead(as_vector(s).shape[1], as_vector(t).shape[1], stage.data.train.num_samples, cfg.feat_dim)}

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        head = stage.extra[NAME]
        s, t = paired(cfg, student_out, teacher_outs)
        v_s = stage.gather(F.normalize(head.embed_s(as_vector(s).float()), dim=1))
        v_t = stage.gather(F.normalize(head.embed_t(as_vector(t).float()), dim=1))
        index = stage.gather(batch.index.to(v_s.device))
        samples = head.memory_s.shape[0]
        # the same negatives on every rank: a generator of the recipe seed and the step
        # drawn on the device, by a generator of the recipe seed and the step (on the CPU these
        # are the numbers a CPU generator draws)
        g = torch.Generator(device=index.device).manual_seed(stage.recipe.seed * 1_000_003 + stage.step)
        negatives = torch.randint(0, samples, (len(index), cfg.negatives), generator=g, device=index.device)
        rows = torch.cat([index[:, None], negatives], dim=1)
        out_s = contrast(v_s, head.memory_t, rows, cfg.temperature)  # student anchor, teacher bank
        out_t = contrast(v_t, head.memory_s, rows, cfg.temperature)  # teacher anchor, student bank
        if not getattr(self, "z_known", False):  # checked once per stage: no device sync every step
            with torch.no_grad():
                if head.z_s < 0:  # the constants, once, from the first batch (restored on resume)
                    head.z_s.fill_(float(out_s.mean()) * samples)
                    head.z_t.fill_(float(out_t.mean()) * samples)
            self.z_known = True
        loss = nce_loss(out_s / head.z_s, samples) + nce_loss(out_t / head.z_t, samples)
        update_memory(head.memory_s, index, v_s.detach(), cfg.momentum)
        update_memory(head.memory_t, index, v_t.detach(), cfg.momentum)
        return {"crd": cfg.weight * loss}
