"""Progress: a tqdm bar per epoch on a terminal; otherwise a log line every ``interval_s``
seconds and one per epoch, so that CI logs and batch jobs show a run is alive."""

from __future__ import annotations

import logging
import sys
import time

import attrs
from attrs import field
from attrs import validators as v

from kdlab import hookimpl

log = logging.getLogger("kdlab")


@attrs.frozen(kw_only=True)
class ProgressConfig:
    interval_s: float = field(default=30.0, validator=v.gt(0))  # log-line interval off a terminal
    bar: bool = True  # show a bar when stderr is a terminal


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))


class Progress:
    default_enabled = True

    def __init__(self, config):
        self.config = config
        self.bar = None
        self.last_log = 0.0
        self.quiet = False

    config_class = ProgressConfig

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        self.quiet = not stage.is_main
        desc = f"{stage.name} {epoch + 1}/{stage.config.epochs}"
        if self.config.bar and sys.stderr.isatty() and not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=stage.steps_per_epoch, desc=desc, leave=False, dynamic_ncols=True)
        self.last_log = time.monotonic()

    @hookimpl
    def kdlab_step_end(self, stage, loss, terms):
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(1)
            if stage.step % 20 == 0:
                self.bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        elif time.monotonic() - self.last_log > self.config.interval_s:
            self.last_log = time.monotonic()
            log.info("stage %s epoch %d/%d step %d loss %.4f", stage.name, stage.epoch + 1,
                     stage.config.epochs, stage.step, loss.item())

    @hookimpl
    def kdlab_epoch_end(self, stage, epoch, metrics):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.quiet:
            return
        log.info("stage %s epoch %d/%d %s", stage.name, epoch + 1, stage.config.epochs, _fmt(metrics))

    @hookimpl
    def kdlab_stage_summary(self, stage, metrics):
        if stage.is_main:
            log.info("stage %s done: %s", stage.name, _fmt(metrics))
