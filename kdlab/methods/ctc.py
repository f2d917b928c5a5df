"""CTC training and CTC distillation (seed 000, part 2). One module, four clearly separated
strategies, all on per-frame outputs of shape (batch, frames, classes) with class 0 the blank:

* ``ctc``: plain CTC on the labels, the baseline. Term ``ctc``.
* ``ctc_kd`` with ``strategy = "posterior"``: per-frame KL(teacher || student) at temperature T
  (times T^2), averaged over the valid frames; terms ``kd`` = lambda * KD and ``ctc`` =
  (1 - lambda) * CTC.
* ``strategy = "blank_filtered"`` (Hilmes et al. 2025): the KL only on frames where the
  teacher's argmax is not blank, optionally also ``keep_neighbours`` frames either side of each
  kept frame; averaged over the kept frames (0 when the teacher is blank everywhere).
* ``strategy = "blank_weighted"``: every valid frame weighted by
  ``w_t = max(min_weight, (1 - p_blank(t)) ** gamma)``, with ``p_blank`` the teacher's blank
  probability at T = 1: frames where the teacher emits a phoneme count fully, frames it is sure
  are blank count ``min_weight``; KD = sum_t w_t KL_t / sum_t w_t. ``gamma`` sharpens the
  preference (gamma = 0 gives posterior KD).

Frame rates: teacher and student must produce one frame per 20 ms (wav2vec2 stride 320; the
Conformer's x2 subsampling of 10 ms features); with a student at 40 ms set ``teacher_pool = 2``
(teacher posteriors averaged over pairs of frames). Both are then truncated to the shorter length,
and frames past either model's valid length never count.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import KdlabError, Requirements, hookimpl
from kdlab.speech.ctc_decoding import BLANK


@attrs.frozen(kw_only=True)
class CTCKDConfig:
    strategy: Literal["posterior", "blank_filtered", "blank_weighted"] = "posterior"
    temperature: float = field(default=1.0, validator=v.gt(0))
    lam: float = field(default=0.5, validator=[v.ge(0), v.le(1)])  # lambda * KD + (1 - lambda) * CTC
    keep_neighbours: int = field(default=0, validator=v.ge(0))  # blank_filtered: frames kept either side
    gamma: float = field(default=1.0, validator=v.ge(0))  # blank_weighted: exponent
    min_weight: float = field(default=0.0, validator=[v.ge(0), v.le(1)])  # blank_weighted: floor
    teacher_pool: int = field(default=1, validator=v.ge(1))  # average teacher frames to match the student


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the CTC loss per utterance divided by its target length (torch's
    "mean" reduction). ``targets`` is padded with -1."""
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
    target_lengths = (targets >= 0).sum(1)
    return F.ctc_loss(log_probs, targets.clamp(min=0), lengths, target_lengths, blank=BLANK,
                      reduction="mean", zero_infinity=True)


def align(student: torch.Tensor, s_len: torch.Tensor, teacher: torch.Tensor, t_len: torch.Tensor, pool: int = 1):
    """Put teacher and student frames side by side: pool the teacher ``pool``x (averaging
    probabilities), truncate both to the shorter, and return the mask of frames valid in both."""
    if pool > 1:
        probs = F.softmax(teacher.float(), dim=-1).transpose(1, 2)
        probs = F.avg_pool1d(probs, pool, pool, ceil_mode=True).transpose(1, 2)
        teacher = probs.clamp_min(1e-8).log()  # log-probabilities are valid logits
        t_len = torch.div(t_len + pool - 1, pool, rounding_mode="floor")
    frames = min(student.shape[1], teacher.shape[1])
    valid = torch.arange(frames, device=student.device)[None] < torch.minimum(s_len, t_len)[:, None]
    return student[:, :frames], teacher[:, :frames], valid


def frame_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) per frame at temperature T, times T^2: (batch, frames)."""
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1) * temperature**2


# Each strategy's loss is a weighted mean over frames; ``divisor`` replaces the local sum of the
# weights (``Stage.mean_divisor``: the global batch's under --nproc).


def posterior_kd(student, teacher, valid, temperature: float, divisor=None) -> torch.Tensor:
    kl = frame_kl(student, teacher, temperature)
    return (kl * valid).sum() / (valid.sum().clamp(min=1) if divisor is None else divisor(valid.float()))


def filtered_frames(teacher, valid, keep_neighbours: int = 0) -> torch.Tensor:
    keep = (teacher.argmax(-1) != BLANK) & valid
    if keep_neighbours:
        k = keep_neighbours
        keep = F.max_pool1d(keep.float()[:, None], 2 * k + 1, stride=1, padding=k)[:, 0].bool() & valid
    return keep


def blank_filtered_kd(student, teacher, valid, temperature: float, keep_neighbours: int = 0, divisor=None) -> torch.Tensor:
    keep = filtered_frames(teacher, valid, keep_neighbours)
    kl = frame_kl(student, teacher, temperature)
    return (kl * keep).sum() / (keep.sum().clamp(min=1) if divisor is None else divisor(keep.float()))


def blank_weights(teacher: torch.Tensor, valid: torch.Tensor, gamma: float, min_weight: float) -> torch.Tensor:
    p_blank = F.softmax(teacher.float(), dim=-1)[..., BLANK]
    return (1 - p_blank).clamp(min=0).pow(gamma).clamp(min=min_weight) * valid


def blank_weighted_kd(student, teacher, valid, temperature: float, gamma: float = 1.0, min_weight: float = 0.0,
                      divisor=None):
    w = blank_weights(teacher, valid, gamma, min_weight)
    kl = frame_kl(student, teacher, temperature)
    return (kl * w).sum() / (w.sum().clamp(min=1e-8) if divisor is None else divisor(w))


def _check_sequence(stage, out, what: str) -> None:
    if out.lengths is None or out.logits.ndim != 3:
        raise KdlabError(f"stages.{stage.name}: {what} needs a sequence model (per-frame outputs with lengths), "
                         f"e.g. model.arch = \"conformer_ctc\" or \"wav2vec2_ctc\"")


class CTC:
    data_kinds = {"ctc"}  # kdlab validate refuses it on other data
    @staticmethod
    def requires(config, stage):
        return Requirements(terms={"ctc"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        if stage.step == 0:
            _check_sequence(stage, student_out, "methods.ctc")
        return {"ctc": ctc_loss(student_out.logits, student_out.lengths, batch.targets)}


class CTCKD:
    data_kinds = {"ctc"}
    config_class = CTCKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"kd", "ctc"} if config.lam < 1 else {"kd"})

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        if stage.step == 0:
            _check_sequence(stage, student_out, "methods.ctc_kd")
            for t in teacher_outs:
                _check_sequence(stage, t, "methods.ctc_kd (teacher)")
        kd = 0.0
        for t in teacher_outs:
            s, tl, valid = align(student_out.logits, student_out.lengths, t.logits, t.lengths, cfg.teacher_pool)
            if cfg.strategy == "posterior":
                kd = kd + posterior_kd(s, tl, valid, cfg.temperature, divisor=stage.mean_divisor)
            elif cfg.strategy == "blank_filtered":
                kd = kd + blank_filtered_kd(s, tl, valid, cfg.temperature, cfg.keep_neighbours, divisor=stage.mean_divisor)
            else:
                kd = kd + blank_weighted_kd(s, tl, valid, cfg.temperature, cfg.gamma, cfg.min_weight,
                                            divisor=stage.mean_divisor)
        terms = {"kd": cfg.lam * kd / len(teacher_outs)}
        if cfg.lam < 1:
            terms["ctc"] = (1 - cfg.lam) * ctc_loss(student_out.logits, student_out.lengths, batch.targets)
        return terms
