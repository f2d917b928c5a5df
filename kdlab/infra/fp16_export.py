"""Half-precision export: at stage end the student is converted to float16, saved next to the
full-precision export as ``models/<stage>.fp16.pt``, and evaluated again *in that precision*
(weights and activations fp16, on the stage's device), so the table shows what the smaller file
really scores. Adds ``val/fp16_<metric>``, ``test/fp16_<metric>`` and ``bytes_fp16``.

Enable per stage: ``[stages.<s>.methods.fp16_export]``. Works for any model whose layers run in
float16 on the device (the CPU included for conv, GRU and linear layers).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdlab import Batch, Requirements, hookimpl
from kdlab.engine import checkpoint
from kdlab.engine.loop import plain_config, evaluate
from kdlab.engine.stats import state_dict_bytes


class HalfModel(nn.Module):
    """Runs ``model`` in float16: inputs are cast down, logits back up for the metrics. Sequence
    models (``forward_batch``) get their batch's floating-point tensors cast down too."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float16 throughout, whatever autocast (the amp method) is active around the forward
        with torch.autocast(x.device.type, enabled=False):
            return self.model(x.half()).float()

    def forward_batch(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not hasattr(self.model, "forward_batch"):
            return self(batch.inputs), None
        half = lambda t: t.half() if t.is_floating_point() else t  # noqa: E731
        low = Batch(half(batch.inputs), batch.targets, batch.index, {k: half(t) for k, t in batch.extra.items()})
        with torch.autocast(batch.inputs.device.type, enabled=False):
            logits, lengths = self.model.forward_batch(low)
        return logits.float(), lengths


class Fp16Export:
    @staticmethod
    def requires(config, stage):
        return Requirements(terms=())

    @hookimpl(trylast=True)  # after the others have finished the model (pruning made permanent)
    def kdlab_stage_end(self, stage, metrics):
        half = copy.deepcopy(stage.student).half().train(False)
        full, stage.student = stage.student, HalfModel(half)
        try:
            for split in ("val", "test"):
                for key, value in evaluate(stage, split).items():
                    name = key.split("/", 1)
                    metrics[f"{name[0]}/fp16_{name[1]}"] = value
        finally:
            stage.student = full
        metrics["bytes_fp16"] = state_dict_bytes(half)
        if stage.is_main:
            cfg = stage.config
            checkpoint.export_model(
                stage.run_dir / "models" / f"{stage.name}.fp16.pt", model=half, arch=cfg.model.arch,
                config=plain_config(cfg.model.config), num_classes=stage.data.num_classes,
                input_shape=stage.data.input_shape, classes=stage.data.classes,
            )
