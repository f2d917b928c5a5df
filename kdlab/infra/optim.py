"""Default optimizer, learning-rate schedule, backward and optimizer step.

Reads the core's ``[stages.<s>.optimizer]`` and ``[stages.<s>.scheduler]`` tables. All hooks are
``trylast`` so that any plugin (AMP, a custom optimizer) can answer first.
"""

from __future__ import annotations

import math

import torch

from kdlab import hookimpl


def make_optimizer(config, params) -> torch.optim.Optimizer:
    params = list(params)
    # on CUDA, torch's fused kernels update every parameter in a few launches; elsewhere the
    # default (foreach where available)
    fast = {"fused": True} if params and all(p.is_cuda and p.is_floating_point() for p in params) else {}
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov, **fast)
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fast)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fast)


def lr_factor(config, epochs: int, t: int, steps_per_epoch: int = 1, max_steps: int | None = None) -> float:
    """Multiplier of the base learning rate at ``t`` (0-based): the epoch, or with ``interval =
    "step"`` the optimizer step (``steps_per_epoch`` of them an epoch; ``max_steps``: the stage's
    step budget, when it ends the stage first). Linear warm-up, then the schedule. A pure
    function so that it can be tested and plotted."""
    per = steps_per_epoch if config.interval == "step" else 1
    warmup = config.warmup_epochs * per + config.warmup_steps
    if t < warmup:
        return (t + 1) / (warmup + 1)
    if config.name == "cosine":
        total = epochs * per if max_steps is None or config.interval != "step" else min(epochs * per, max_steps)
        span = max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / span))
    if config.name == "multistep":
        return config.gamma ** sum(t // per >= m for m in config.milestones)
    return 1.0


class Optim:
    default_enabled = True

    @hookimpl(trylast=True)
    def kdlab_configure_optimizer(self, stage, params):
        return make_optimizer(stage.config.optimizer, params)

    @hookimpl(trylast=True)
    def kdlab_configure_scheduler(self, stage, optimizer):
        config = stage.config.scheduler
        if config.name == "constant" and config.warmup_epochs == 0 and config.warmup_steps == 0:
            return None
        # LambdaLR keeps the schedule a pure function of the epoch (or step), so its state is just
        # a counter; the loop steps it per epoch or per step (scheduler.interval)
        per = stage.steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: lr_factor(config, stage.config.epochs, t, per, stage.step_budget)
        )

    @hookimpl(trylast=True)
    def kdlab_backward(self, stage, loss):
        loss.backward()
        return True

    @hookimpl(trylast=True)
    def kdlab_optimizer_step(self, stage):
        stage.optimizer.step()
        return True
