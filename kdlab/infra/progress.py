"""Progress: a tqdm bar per epoch on a terminal (steps, rate, ETA; tokens/s for text);
otherwise a log line every ``interval_s`` seconds (step of total, loss, tokens/s for text, the
epoch's ETA) and one per epoch, so that CI logs and batch jobs show a run is alive and how long
it will take."""

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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))


class Progress:
    default_enabled = True

    def __init__(self, config):
        self.config = config
        self.bar = None
        self.last_log = 0.0
        self.quiet = False
        self.started, self.in_epoch, self.tokens0, self.total = 0.0, 0, 0, 0

    config_class = ProgressConfig

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        self.quiet = not stage.is_main
        desc = f"{stage.name} {epoch + 1}/{stage.config.epochs}"
        if self.config.bar and sys.stderr.isatty() and not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=self._total(stage), desc=desc, leave=False, dynamic_ncols=True)
        self.last_log = self.started = time.monotonic()
        self.in_epoch, self.tokens0, self.total = 0, stage.tokens, self._total(stage)

    @staticmethod
    def _total(stage) -> int:
        """This epoch's steps: all of them, or what the stage's budget leaves."""
        budget = stage.step_budget
        left = stage.steps_per_epoch if budget is None else min(stage.steps_per_epoch, max(budget - stage.step, 0))
        return left

    @hookimpl
    def kdlab_step_end(self, stage, loss, terms):
        if self.quiet:
            return
        self.in_epoch += 1
        now = time.monotonic()
        text = stage.data.extra.get("text") is not None
        rate = (stage.tokens - self.tokens0) / max(now - self.started, 1e-9)
        if self.bar is not None:
            self.bar.update(1)
            if stage.step % 20 == 0:
                extra = {"tok/s": f"{rate:,.0f}"} if text else {}
                self.bar.set_postfix(loss=f"{loss.item():.4f}", **extra, refresh=False)
        elif now - self.last_log > self.config.interval_s:
            self.last_log = now
            total = max(self.total, self.in_epoch)
            eta = (now - self.started) / self.in_epoch * (total - self.in_epoch)
            speed = f", {rate:,.0f} tokens/s" if text else ""
            log.info("stage %s epoch %d/%d step %d/%d loss %.4f%s, epoch ETA %s", stage.name, stage.epoch + 1,
                     stage.config.epochs, self.in_epoch, total, loss.item(), speed, _duration(eta))

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
