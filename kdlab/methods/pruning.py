"""Global unstructured magnitude pruning with torch.nn.utils.prune.global_unstructured.

The smallest-magnitude weights across all chosen layers together are masked to zero, either at
once (``schedule = "oneshot"`` at ``start_epoch``) or gradually (``"gradual"``: the cubic
schedule of Zhu & Gupta 2017, "To prune, or not to prune", arXiv:1710.01878, from
``start_epoch`` to ``end_epoch``); the remaining epochs fine-tune the surviving weights.

The masks live in the model's state_dict (``weight_orig`` / ``weight_mask``), so checkpoints keep
them; every target is re-parametrised with an all-ones mask at stage start so that a resumed
checkpoint's keys match. At stage end the pruning is made permanent (``prune.remove``) so the
exported model is a plain one with zeros. Metric: ``sparsity`` of the pruned layers.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from attrs import field
from attrs import validators as v
from torch import nn
from torch.nn.utils import prune

from kdlab import KdlabError, Requirements, hookimpl

LAYER_TYPES = {"Linear": nn.Linear, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d}


def _layer_names(_inst, _attr, value):
    unknown = [t for t in value if t not in LAYER_TYPES]
    if unknown or not value:
        raise ValueError(f"must be a non-empty list of {', '.join(LAYER_TYPES)}, got {list(value)}")


@attrs.frozen(kw_only=True)
class PruningConfig:
    sparsity: float = field(validator=[v.ge(0), v.lt(1)])  # fraction of weights set to zero
    schedule: Literal["oneshot", "gradual"] = "oneshot"
    start_epoch: int = field(default=0, validator=v.ge(0))
    end_epoch: int | None = field(default=None, validator=v.optional(v.ge(1)))  # gradual only
    layers: tuple[str, ...] = field(default=("Conv2d", "Linear"), validator=_layer_names)


def target_sparsity(config: PruningConfig, epoch: int, epochs: int) -> float:
    """Sparsity the layers should have during ``epoch`` (0-based)."""
    if epoch < config.start_epoch:
        return 0.0
    if config.schedule == "oneshot":
        return config.sparsity
    # by default reach the target half-way through the remaining epochs, then fine-tune
    end = config.end_epoch if config.end_epoch is not None else config.start_epoch + (epochs - 1 - config.start_epoch) // 2
    progress = min(1.0, (epoch - config.start_epoch + 1) / (end - config.start_epoch + 1))
    return config.sparsity * (1 - (1 - progress) ** 3)


def prunable(model: nn.Module, layers: tuple[str, ...]) -> list[tuple[nn.Module, str]]:
    kinds = tuple(LAYER_TYPES[t] for t in layers)
    return [(m, "weight") for m in model.modules() if isinstance(m, kinds)]


def sparsity(targets: list[tuple[nn.Module, str]]) -> float:
    zeros = sum(int((getattr(m, name) == 0).sum()) for m, name in targets)
    total = sum(getattr(m, name).numel() for m, name in targets)
    return zeros / max(1, total)


def prune_to(targets: list[tuple[nn.Module, str]], goal: float) -> None:
    """Add L1 masks so that a fraction ``goal`` of all target weights is zero."""
    total = sum(getattr(m, n).numel() for m, n in targets)
    masked = sum(int((m.get_buffer(f"{n}_mask") == 0).sum()) if hasattr(m, f"{n}_mask") else 0 for m, n in targets)
    extra = round(goal * total) - masked
    if extra > 0:
        # an integer amount prunes that many of the still-unmasked weights, globally by |w|.
        # The magnitudes are the current ones (weight_orig * mask): by default torch reads the
        # module's `weight` attribute, which the pre-forward hook last set -- before the last
        # optimizer step, or, after a resume, from the freshly built model -- so a resumed run
        # pruned other weights than an uninterrupted one.
        scores = {(m, n): getattr(m, f"{n}_orig") * m.get_buffer(f"{n}_mask") if hasattr(m, f"{n}_mask")
                  else getattr(m, n) for m, n in targets}
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=extra, importance_scores=scores)


class Pruning:
    def __init__(self, config):
        self.config = config
        self.targets: list[tuple[nn.Module, str]] = []

    config_class = PruningConfig

    @staticmethod
    def requires(config, stage):
        problems = []
        if config.start_epoch >= stage.epochs:
            problems.append(("start_epoch", f"{config.start_epoch} must be below the stage's epochs ({stage.epochs}): "
                                            "pruning would never start"))
        elif config.end_epoch is not None and not config.start_epoch <= config.end_epoch < stage.epochs:
            problems.append(("end_epoch", f"{config.end_epoch} must be in [start_epoch, epochs) = "
                                          f"[{config.start_epoch}, {stage.epochs})"))
        return Requirements(terms=(), problems=tuple(problems))

    @hookimpl
    def kdlab_stage_start(self, stage):
        cfg = self.config
        self.targets = prunable(stage.student, cfg.layers)
        if not self.targets:
            raise KdlabError(f"stages.{stage.name}.methods.pruning: the student has no {', '.join(cfg.layers)} layers")
        for module, name in self.targets:
            prune.identity(module, name)

    @hookimpl
    def kdlab_epoch_start(self, stage, epoch):
        with torch.no_grad():
            prune_to(self.targets, target_sparsity(self.config, epoch, stage.config.epochs))

    @hookimpl
    def kdlab_eval_metrics(self, stage, split):
        return {"sparsity": sparsity(self.targets)}

    @hookimpl
    def kdlab_stage_end(self, stage):
        for module, name in self.targets:
            prune.remove(module, name)
