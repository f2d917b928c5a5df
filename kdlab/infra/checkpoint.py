"""Checkpoints and resume: ``checkpoints/<stage>/last.pt`` after every ``every`` epochs and
``best.pt`` whenever the stage's monitored metric improves, both written atomically.

A stage whose ``last.pt`` exists in the run directory resumes from it (``kdlab run --resume``).
"""

from __future__ import annotations

import math

import attrs
from attrs import field
from attrs import validators as v

from kdlab import KdlabError, hookimpl
from kdlab.engine import checkpoint


@attrs.frozen(kw_only=True)
class CheckpointConfig:
    every: int = field(default=1, validator=v.ge(1))  # epochs between last.pt writes
    best: bool = True  # also keep best.pt by the stage's `monitor` metric


class Checkpoint:
    default_enabled = True

    def __init__(self):
        self.best_value: float | None = None

    config_class = CheckpointConfig

    @staticmethod
    def _dir(stage):
        return stage.run_dir / "checkpoints" / stage.name

    @hookimpl(tryfirst=True)
    def kdlab_resume_state(self, stage):
        last = self._dir(stage) / "last.pt"
        if not last.is_file():
            return None
        return checkpoint.check_resume_state(checkpoint.load(last, map_location=stage.device), last, stage.config.epochs)

    @hookimpl
    def kdlab_state_dict(self, stage):
        return {"best_value": self.best_value}

    @hookimpl
    def kdlab_load_state_dict(self, stage, state):
        self.best_value = state["best_value"]

    def _improved(self, stage, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if stage.config.monitor_mode == "max" else value < self.best_value

    @hookimpl
    def kdlab_epoch_end(self, stage, epoch, metrics):
        cfg = stage.config_for(self)
        monitor = stage.config.monitor or "val/accuracy"
        value = metrics.get(monitor)
        # a monitor the recipe names must exist, or best.pt would silently never be written
        if cfg.best and metrics and value is None and stage.config.monitor is not None:
            raise KdlabError(f"stages.{stage.name}.monitor = '{stage.config.monitor}': no plugin reports this "
                             f"metric (reported: {', '.join(sorted(metrics))}); set monitor to one of them, or "
                             "plugins.checkpoint.best = false")
        if not stage.is_main:  # every rank resumes from the files; rank 0 alone writes them
            return
        is_best = cfg.best and value is not None and self._improved(stage, value)
        if is_best:
            self.best_value = value
        last_epoch = stage.epoch == stage.config.epochs
        if is_best or stage.epoch % cfg.every == 0 or last_epoch:
            state = stage.state_dict()  # after best_value was updated, so resume keeps it
            if stage.epoch % cfg.every == 0 or last_epoch:
                checkpoint.save(state, self._dir(stage) / "last.pt")
            if is_best:
                checkpoint.save(state, self._dir(stage) / "best.pt")
