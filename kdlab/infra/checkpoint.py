"""Checkpoints and resume: ``checkpoints/<stage>/last.pt`` and ``best.pt`` (the state at the
epoch where the stage's monitored metric was best), written atomically.

Writes are paced by time, not by epochs, so that short epochs do not pay for a file (and its
fsync) each: ``last.pt`` at the first epoch end ``every_s`` seconds after the previous write
(and every ``every`` epochs, if set), at the stage's last epoch, and when the run is stopped by
Ctrl-C or SIGTERM (the state of the last finished epoch, kept in memory at every epoch end).
``best.pt`` goes out with the next write. A stage whose ``last.pt`` exists in the run
directory resumes from it (``kdlab run --resume``).
"""

from __future__ import annotations

import math
import time

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import KdlabError, hookimpl
from kdlab.engine import checkpoint


@attrs.frozen(kw_only=True)
class CheckpointConfig:
    every_s: float = field(default=60.0, validator=v.ge(0))  # seconds between last.pt writes (0: every epoch)
    every: int | None = field(default=None, validator=v.optional(v.ge(1)))  # also every this many epochs
    best: bool = True  # also keep best.pt by the stage's `monitor` metric


class Checkpoint:
    default_enabled = True

    def __init__(self, config):
        self.config = config
        self.best_value: float | None = None
        self.last_write = 0.0
        self.snapshot: dict | None = None  # the last finished epoch's state, not yet written
        self.best: dict | None = None  # the best epoch's state, not yet written

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
        cfg = self.config
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
        due = (stage.training_over or time.monotonic() - self.last_write >= cfg.every_s
               or (cfg.every is not None and stage.epoch % cfg.every == 0))
        state = stage.state_dict()  # after best_value was updated, so resume keeps it
        if due:
            self._write(stage, state, self.best if not is_best else state)
        else:  # kept (off the device) for an interrupt or the next write
            self.snapshot = _copy(state)
            if is_best:
                self.best = self.snapshot

    def _write(self, stage, last: dict, best: dict | None) -> None:
        checkpoint.save(last, self._dir(stage) / "last.pt")
        if best is not None:
            checkpoint.save(best, self._dir(stage) / "best.pt")
        self.snapshot = self.best = None
        self.last_write = time.monotonic()

    @hookimpl
    def kdlab_stage_start(self, stage):
        self.last_write, self.snapshot, self.best = time.monotonic(), None, None

    @hookimpl
    def kdlab_interrupted(self, stage):
        if stage.is_main and self.snapshot is not None:
            self._write(stage, self.snapshot, self.best)


def _copy(state):
    """A deep copy of a state dict with its tensors on the CPU (the model trains on)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_copy(v) for v in state)
    return state
