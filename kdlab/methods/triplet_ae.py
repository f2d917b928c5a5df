"""Multi-teacher distillation through a shared latent space built with triplet-loss
autoencoders (seed 002; related: Oki et al. 2020, "Triplet Loss for Knowledge Distillation",
arXiv:2004.08116; Schroff et al. 2015, FaceNet, arXiv:1503.03832).

Several teachers, each with its own incomplete information (e.g. trained on different class
subsets, see ``supervised.classes``), tap hidden representations of different widths. Each
teacher k has an autoencoder (encoder E_k: D_k -> latent, decoder D_k: latent -> D_k); the
student has an encoder E_s into the same latent space. Three loss terms:

- ``ae_recon``: mean over teachers of MSE(D_k(E_k(h_k)), h_k), so each code keeps its teacher's
  information;
- ``triplet``: E = mean over anchors of max(0, m + ||f(a) - f(p)||^2 - ||f(a) - f(n)||^2) over the
  codes of all teachers together (anchor and positive of the same class, negative of another),
  which pulls the teachers' spaces into one shared, class-structured space. Mining:
  ``batch_hard`` (per anchor, the farthest positive and the nearest negative in the batch, any
  teacher; Hermans et al. 2017, arXiv:1703.07737) or ``batch_all`` (mean over every valid
  triplet);
- ``latent_kd``: MSE between the student's code E_s(h_s) and the mean of the teachers' codes
  (detached: the student follows the shared space, it does not move it).

Codes are L2-normalised when ``normalize`` (so the margin has a fixed scale). The autoencoders
train with the student and are not exported.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v
from torch import nn

from kdlab import Requirements, hookimpl
from kdlab.methods.feature_pairs import as_vector

NAME = "triplet_ae"


@attrs.frozen(kw_only=True)
class TripletAEConfig:
    student: str = "emb"
    teacher: str = "emb"  # alias tapped in every teacher (taps.teacher)
    teachers: tuple[int, ...] | None = None  # indices into the stage's teachers; default: all
    latent_dim: int = field(default=32, validator=v.ge(1))
    hidden: int = field(default=0, validator=v.ge(0))  # 0: linear encoder/decoder
    margin: float = field(default=0.5, validator=v.ge(0))
    mining: Literal["batch_hard", "batch_all"] = "batch_hard"
    normalize: bool = True


def triplet_loss(codes: torch.Tensor, labels: torch.Tensor, *, margin: float,
                 mining: str = "batch_hard") -> torch.Tensor:
    """Triplet loss with squared Euclidean distances over one batch of codes (see module doc).
    Anchors without a positive or a negative in the batch are left out; zero if none remain."""
    d = torch.cdist(codes.float(), codes.float()).pow(2)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=codes.device)
    pos, neg = same & ~eye, ~same
    if mining == "batch_hard":
        valid = pos.any(1) & neg.any(1)
        if not valid.any():
            return codes.sum() * 0.0
        hardest_pos = d.masked_fill(~pos, float("-inf")).amax(1)
        hardest_neg = d.masked_fill(~neg, float("inf")).amin(1)
        return F.relu(margin + hardest_pos - hardest_neg)[valid].mean()
    triplets = pos[:, :, None] & neg[:, None, :]  # (a, p, n)
    if not triplets.any():
        return codes.sum() * 0.0
    losses = F.relu(margin + d[:, :, None] - d[:, None, :])
    return losses[triplets].mean()


def _mlp(d_in: int, d_out: int, hidden: int) -> nn.Module:
    if hidden == 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class TripletAE:
    def __init__(self, config, stage):
        self.config = config
        # the teachers it aligns (checked by requires before the stage is built)
        self.indices = list(config.teachers) if config.teachers is not None else list(range(len(stage.teachers)))

    config_class = TripletAEConfig

    @staticmethod
    def requires(config, stage):
        indices = tuple(config.teachers) if config.teachers is not None else tuple(range(len(stage.teachers)))
        problems = []
        if config.teachers is not None and len(indices) < 2:
            problems.append(("teachers", f"{len(indices)} teacher index, it needs at least two"))
        bad = [i for i in indices if i >= len(stage.teachers)]
        if bad and len(stage.teachers) >= 2:
            problems.append(("teachers", f"index {bad[0]}, but the stage has {len(stage.teachers)} teacher(s)"))
        return Requirements(teachers=2, terms={"ae_recon", "triplet", "latent_kd"}, student_taps=config.student,
                            teacher_taps=tuple((i, (config.teacher,)) for i in indices), problems=tuple(problems))

    def _code(self, stage, name: str, features: torch.Tensor) -> torch.Tensor:
        code = stage.extra[name](as_vector(features).float())
        return F.normalize(code, dim=1) if self.config.normalize else code

    @hookimpl
    def kdlab_extra_modules(self, stage, probe):
        cfg = self.config
        student_out, teacher_outs = probe  # taps checked at stage start
        modules = {f"{NAME}_student": _mlp(as_vector(student_out.features[cfg.student]).shape[1],
                                           cfg.latent_dim, cfg.hidden)}
        for k in self.indices:
            width = as_vector(teacher_outs[k].features[cfg.teacher]).shape[1]
            modules[f"{NAME}_enc{k}"] = _mlp(width, cfg.latent_dim, cfg.hidden)
            modules[f"{NAME}_dec{k}"] = _mlp(cfg.latent_dim, width, cfg.hidden)
        return modules

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        codes, recon = [], []
        for k in self.indices:
            hidden = as_vector(teacher_outs[k].features[cfg.teacher]).float()
            code = self._code(stage, f"{NAME}_enc{k}", hidden)
            recon.append(F.mse_loss(stage.extra[f"{NAME}_dec{k}"](code), hidden))
            codes.append(code)
        labels_one = batch.targets
        student_code = self._code(stage, f"{NAME}_student", student_out.features[cfg.student])
        return {
            "ae_recon": torch.stack(recon).mean(),
            # mining over the whole global batch, as in one process
            "triplet": triplet_loss(torch.cat([stage.gather(c) for c in codes]), stage.gather(labels_one).repeat(len(codes)),
                                    margin=cfg.margin, mining=cfg.mining),
            "latent_kd": F.mse_loss(student_code, torch.stack(codes).mean(0).detach()),
        }
