"""Stops a search trial that is not going to win, from the validation metrics the loop computes.

``kdlab search`` registers one instance per trial run (in-process, through
``discover(extra=...)``: it carries the live Optuna trial, which no entry point can). At each
epoch end of the watched stage it reports the watched metric to the trial under the epoch
number, and asks Optuna's pruner (median, successive halving, Hyperband) whether to stop;
if so it raises ``optuna.TrialPruned``, which ends the run like any error and which the search
records as a pruned trial. The run directory keeps its last checkpoint.
"""

from __future__ import annotations

import logging

from kdlab import hookimpl

log = logging.getLogger("kdlab")


class TrialPruning:
    default_enabled = True

    def __init__(self, trial, stage: str, metric: str):
        self.trial, self.stage, self.metric = trial, stage, metric

    @hookimpl(trylast=True)  # after the history and checkpoint of the epoch are written
    def kdlab_epoch_end(self, stage, epoch, metrics):
        if stage.name != self.stage or self.metric not in metrics:
            return
        import optuna  # present: only kdlab search, which needs it, registers this plugin

        value = float(metrics[self.metric])
        self.trial.report(value, step=epoch + 1)
        if self.trial.should_prune():
            log.info("trial %d pruned after epoch %d of stage %s (%s = %.4g)", self.trial.number, epoch + 1,
                     stage.name, self.metric, value)
            raise optuna.TrialPruned(f"{self.metric} = {value:.4g} after epoch {epoch + 1}")
