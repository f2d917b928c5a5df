"""Compression ratios against a baseline stage (usually the teacher), for any run.

With ``[plugins.compression] baseline = "teacher"`` every stage's final metrics gain
``macs_ratio``, ``bytes_ratio``, ``latency_ratio`` and ``params_ratio`` (baseline / this stage:
10 means ten times smaller or faster), and ``bytes_fp16_ratio`` when the stage exported a
float16 copy (``fp16_export``). The baseline must run earlier in the recipe (or be the stage
itself). MACs are counted on one input of the data's shape (one 1-second clip for keyword
spotting), bytes are those of the saved state_dict, latency is a CPU batch forward.
"""

from __future__ import annotations

import json

import attrs

from kdlab import KdlabError, hookimpl

COSTS = ("macs", "bytes", "latency_ms", "params")


@attrs.frozen(kw_only=True)
class CompressionConfig:
    enabled: bool = True
    baseline: str | None = None  # stage whose costs are the reference; None: no ratios


class Compression:
    default_enabled = True

    config_class = CompressionConfig

    def __init__(self, config):
        self.config = config

    @hookimpl
    def kdlab_stage_start(self, stage):
        # checked before training, not after it
        base = self.config.baseline
        order = list(stage.recipe.stages)
        if base is not None and base not in order:
            raise KdlabError(f"plugins.compression.baseline: no stage '{base}' in the recipe")
        if base is not None and order.index(base) > order.index(stage.name):
            raise KdlabError(f"plugins.compression.baseline: stage '{base}' must run before '{stage.name}'")

    @hookimpl(tryfirst=True)  # before the writers (tensorboard hparams) read the metrics
    def kdlab_stage_summary(self, stage, metrics):
        base_name = self.config.baseline
        if base_name is None or not stage.is_main:
            return
        if base_name == stage.name:
            base = metrics
        else:
            path = stage.run_dir / "metrics.json"
            done = json.loads(path.read_text()) if path.is_file() else {}
            base = done.get(base_name, {})
        for cost in COSTS:
            if metrics.get(cost) and base.get(cost):
                metrics[f"{cost.removesuffix('_ms')}_ratio"] = base[cost] / metrics[cost]
        if metrics.get("bytes_fp16") and base.get("bytes"):
            metrics["bytes_fp16_ratio"] = base["bytes"] / metrics["bytes_fp16"]
