"""Per-epoch history: ``<run>/history/<stage>.jsonl``, one line per epoch with the epoch number,
the learning rate its first step used (``lr``; with a per-step schedule also ``lr_last``, the
rate of its last step) and that epoch's validation metrics. Reports read it for the best epoch and
for training curves. On resume, lines past the resumed epoch are dropped before new ones are
written, so the file always describes the weights the run ends with.
"""

from __future__ import annotations

import json

from kdlab import hookimpl
from kdlab.engine import checkpoint
from kdlab.engine.errors import writing


class History:
    default_enabled = True

    def __init__(self):
        self.checked = False
        self.lr = None  # the rate of the epoch's first step

    @staticmethod
    def _path(stage):
        return stage.run_dir / "history" / f"{stage.name}.jsonl"

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        self.lr = stage.optimizer.param_groups[0]["lr"]
        if self.checked or not stage.is_main:
            return
        self.checked = True
        path = self._path(stage)
        if path.exists():  # resumed: keep the lines of the epochs completed before the interruption
            lines = [ln for ln in path.read_text().splitlines() if _epoch(ln) <= epoch]
            checkpoint.save_text("".join(ln + "\n" for ln in lines), path)  # atomic: kept whole on a full disk

    @hookimpl
    def kdlab_epoch_end(self, stage, epoch, metrics):
        if not stage.is_main:
            return
        path = self._path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"epoch": epoch + 1, "lr": self.lr}
        if stage.config.scheduler.interval == "step" and stage.scheduler is not None:
            # the rate now is the next step's: the last step used the one before it
            record["lr_last"] = _rate_before(stage)
        record.update(metrics)
        with writing(path), path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _epoch(line: str) -> float:
    """The epoch of a history line; a line cut off by a full disk (always the last one, written
    after the last checkpoint) counts as past every epoch, so a resume drops it."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _rate_before(stage) -> float:
    """The learning rate of the step just taken, under a per-step LambdaLR-like schedule: the
    base rate times the schedule's factor one step back."""
    scheduler = stage.scheduler
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas:
        return stage.optimizer.param_groups[0]["lr"]
    return scheduler.base_lrs[0] * lambdas[0](scheduler.last_epoch - 1)
