"""Classification metrics on a split: top-1 accuracy, cross-entropy, and top-5 when C > 10.

Accumulated batch by batch (counts and a sum of losses), so a split of any size costs the memory
of one batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab import hookimpl


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    return float(topk_correct(logits, targets, k)) / max(1, len(targets))


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> torch.Tensor:
    """How many rows have their target among the ``k`` largest logits (a 0-dim tensor)."""
    top = logits.topk(k, dim=1).indices
    return (top == targets[:, None]).any(dim=1).sum()


class Accuracy:
    default_enabled = True
    data_kinds = {"classification"}

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    @hookimpl
    def kdlab_eval_start(self):
        self.sums, self.count = {}, 0

    @hookimpl
    def kdlab_eval_batch(self, batch, output):
        if output.logits.ndim != 2:  # per-frame outputs of a sequence model: see the per plugin
            return
        logits, targets = output.logits.float(), batch.targets
        parts = {"accuracy": topk_correct(logits, targets),
                 "loss": F.cross_entropy(logits, targets, reduction="sum")}
        if logits.shape[1] > 10:
            parts["top5"] = topk_correct(logits, targets, 5)
        for name, value in parts.items():  # summed on the device: no sync per batch
            self.sums[name] = self.sums[name] + value if name in self.sums else value.double()
        self.count += len(targets)

    @hookimpl
    def kdlab_eval_metrics(self):
        if not self.count:
            return None
        return {name: float(total) / self.count for name, total in self.sums.items()}
