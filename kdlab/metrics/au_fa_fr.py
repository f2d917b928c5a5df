"""Keyword-spotting metric of seed 001: the area under the false-rejection vs false-acceptance
curve (lower is better). Computed whenever the data has two classes (class 1 = keyword).

Definition (REFERENCES.md): for every threshold in the sorted predicted keyword probabilities
plus {0, 1}, FA = #(predicted keyword, label non-keyword) / N and FR = #(predicted non-keyword,
label keyword) / N, where N counts all clips and "predicted keyword" means probability >=
threshold; au_fa_fr is the area under FR as a function of FA by the trapezoid rule. (The course
code divides FA by the number of negatives and FR by the number of positives instead; that
variant is reported as ``au_fa_fr_class``.)
"""

from __future__ import annotations

import numpy as np
import torch

from kdlab import hookimpl


def fa_fr_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of false acceptances and false rejections at each threshold (ascending)."""
    thresholds = np.concatenate([[0.0], np.sort(probs), [1.0]])
    neg, pos = np.sort(probs[labels == 0]), np.sort(probs[labels == 1])
    fa = len(neg) - np.searchsorted(neg, thresholds, side="left")  # negatives with p >= t
    fr = np.searchsorted(pos, thresholds, side="left")  # keywords with p < t
    return fa.astype(np.float64), fr.astype(np.float64)


def au_fa_fr(probs: np.ndarray, labels: np.ndarray) -> float:
    fa, fr = fa_fr_curve(probs, labels)
    n = len(labels)
    return float(-np.trapezoid(fr / n, fa / n))  # FA falls as the threshold rises


def au_fa_fr_class(probs: np.ndarray, labels: np.ndarray) -> float:
    fa, fr = fa_fr_curve(probs, labels)
    return float(-np.trapezoid(fr / max(1, int(labels.sum())), fa / max(1, int((labels == 0).sum()))))


class AuFaFr:
    """Keeps one keyword probability and one label per clip of the split (the curve needs them
    all, sorted); nothing of a clip's size."""

    default_enabled = True
    data_kinds = {"keyword_spotting"}

    def __init__(self):
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    @hookimpl
    def kdlab_eval_start(self):
        self.probs, self.labels = [], []

    @hookimpl
    def kdlab_eval_batch(self, batch, output):
        if output.logits.ndim != 2 or output.logits.shape[1] != 2:
            return
        self.probs.append(torch.softmax(output.logits.float(), dim=1)[:, 1])
        self.labels.append(batch.targets)

    @hookimpl
    def kdlab_eval_metrics(self):
        if not self.probs:
            return None
        probs, labels = torch.cat(self.probs).cpu().numpy(), torch.cat(self.labels).cpu().numpy()
        self.probs, self.labels = [], []
        return {"au_fa_fr": au_fa_fr(probs, labels), "au_fa_fr_class": au_fa_fr_class(probs, labels)}
