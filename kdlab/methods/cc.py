"""Correlation congruence (Peng et al. 2019, "Correlation Congruence for Knowledge
Distillation", ICCV, arXiv:1904.01802): the student keeps the teacher's correlations between the
samples of a batch, measured with a Gaussian RBF kernel:

    C_ij = exp(-gamma * ||e_i - e_j||^2)     (e: L2-normalised embeddings)
    loss = weight * ||C_t - C_s||_F^2 / b^2

The paper approximates the kernel by its P-order Taylor series; the exact kernel is computed here
(a b x b matrix is cheap), so values differ slightly from a Taylor implementation. RepDistiller's
"CC" is a different, simplified loss (products of neighbouring samples' embedding differences).
torchdistill's ``CCKDLoss`` (torchdistill/losses/mid_level.py, read at commit 3e4373c) is not
this formula either: it compares the outputs of a linear layer added to each model
(``Linear4CCKD``), not L2-normalised, through the kernel's Taylor series up to ``max_p`` (2 in its
sample configs) or a bilinear kernel (e e^T), and returns the Frobenius *distance*
``||C_s - C_t||_F / b^2`` (not its square). Defaults: gamma 0.4 (the paper's), weight 0.02
(RepDistiller's CC weight). Because only b x b matrices are compared, student and teacher
dimensions may differ.
Loss term ``cc``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab.methods.relations import RelationConfig, RelationMethod


@attrs.frozen(kw_only=True)
class CCConfig(RelationConfig):
    weight: float = field(default=0.02, validator=v.ge(0))
    gamma: float = field(default=0.4, validator=v.gt(0))


def rbf_correlation(e: torch.Tensor, gamma: float) -> torch.Tensor:
    e = F.normalize(e.flatten(1), dim=1)
    squared = (2 - 2 * e @ e.t()).clamp_min(0)  # ||a - b||^2 of unit vectors; no sqrt, finite gradient
    return torch.exp(-gamma * squared)


def cc_loss(student: torch.Tensor, teacher: torch.Tensor, cfg: CCConfig) -> torch.Tensor:
    b = student.shape[0]
    return (rbf_correlation(teacher, cfg.gamma) - rbf_correlation(student, cfg.gamma)).pow(2).sum() / (b * b)


class CC(RelationMethod):
    name, term, config_class = "cc", "cc", CCConfig
    loss = staticmethod(cc_loss)
