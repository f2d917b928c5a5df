"""Gradient-norm clipping (torch.nn.utils.clip_grad_norm_) before every optimizer step.

Runs after AMP has unscaled the gradients (AMP's hook is tryfirst)."""

from __future__ import annotations

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import Requirements, hookimpl


@attrs.frozen(kw_only=True)
class GradClipConfig:
    max_norm: float = field(default=1.0, validator=v.gt(0))


class GradClip:
    config_class = GradClipConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(terms=())

    @hookimpl
    def kdlab_before_optimizer_step(self, stage):
        torch.nn.utils.clip_grad_norm_(stage.trainable_parameters(), self.config.max_norm)
