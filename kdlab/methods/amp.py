"""Automatic mixed precision with torch.amp: autocast around the forward passes and the loss;
with fp16 (CUDA or CPU), a GradScaler scales the loss, unscales before clipping, and steps.

``dtype = "auto"`` picks bf16 (no loss scaling needed) wherever the device supports it: the CPU
and CUDA GPUs from Ampere on; fp16 with a GradScaler on older GPUs. The scaler's state is checkpointed.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from kdlab import Requirements, hookimpl


@attrs.frozen(kw_only=True)
class AmpConfig:
    dtype: Literal["auto", "bf16", "fp16"] = "auto"


def autocast_dtype(config: AmpConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        return torch.float16 if device.type == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16
    return torch.float16 if config.dtype == "fp16" else torch.bfloat16


class Amp:
    def __init__(self, config):
        self.config = config
        self.scaler: torch.amp.GradScaler | None = None
        self.dtype = torch.bfloat16

    config_class = AmpConfig

    @staticmethod
    def requires(config, stage):
        return Requirements(terms=())

    @hookimpl
    def kdlab_stage_start(self, stage):
        self.dtype = autocast_dtype(self.config, stage.device)
        # Loss scaling is needed wherever fp16 gradients can underflow: fp16 on any device
        # (bf16 has float32's exponent range and needs none).
        if self.dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(stage.device.type)

    def _autocast(self, stage):
        return torch.autocast(device_type=stage.device.type, dtype=self.dtype)

    @hookimpl(wrapper=True)
    def kdlab_student_forward(self, stage, batch):
        with self._autocast(stage):
            return (yield)

    @hookimpl(wrapper=True)
    def kdlab_teacher_outputs(self, stage, batch):
        with self._autocast(stage):
            return (yield)

    @hookimpl(wrapper=True)
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        with self._autocast(stage):
            return (yield)

    @hookimpl
    def kdlab_backward(self, stage, loss):
        if self.scaler is None:
            return None
        self.scaler.scale(loss).backward()
        return True

    @hookimpl(tryfirst=True)
    def kdlab_before_optimizer_step(self, stage):
        if self.scaler is not None:
            self.scaler.unscale_(stage.optimizer)  # so clipping sees true gradient norms

    @hookimpl
    def kdlab_optimizer_step(self, stage):
        if self.scaler is None:
            return None
        self.scaler.step(stage.optimizer)
        self.scaler.update()
        return True

    @hookimpl
    def kdlab_state_dict(self, stage):
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else None

    @hookimpl
    def kdlab_load_state_dict(self, stage, state):
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
