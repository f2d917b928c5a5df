"""Classification metrics on a split: top-1 accuracy, cross-entropy, and top-5 when C > 10."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab import hookimpl


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    top = logits.topk(k, dim=1).indices
    return (top == targets[:, None]).any(dim=1).float().mean().item()


class Accuracy:
    default_enabled = True
    data_kinds = {"classification"}

    @hookimpl
    def kdlab_eval_metrics(self, stage, split, output, targets):
        if output.logits.ndim != 2:  # per-frame outputs of a sequence model: see the per plugin
            return None
        logits = output.logits.float()
        metrics = {"accuracy": topk_accuracy(logits, targets), "loss": F.cross_entropy(logits, targets).item()}
        if logits.shape[1] > 10:
            metrics["top5"] = topk_accuracy(logits, targets, 5)
        return metrics
