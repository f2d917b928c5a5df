"""What a recipe will run, worked out from the recipe alone: each stage's plugins (in the
order they are registered), the :class:`~kdlab.StageView` its plugins are built with, and the
run's data. ``kdlab validate``, ``kdlab run`` and the preflight checks all ask here, so they
agree on what runs.

Which default-on plugins join a stage: those not switched off (``[plugins.<name>] enabled =
false``) whose ``data_kinds`` meet the data set's ``kinds`` (a class attribute of its config
class, e.g. ``{"image", "classification"}``); a plugin or data set that does not say joins every
stage. A digits stage thus runs accuracy but not the phoneme error rate or the dialogue metrics.
"""

from __future__ import annotations

from typing import Any

from kdlab.engine.errors import KdlabError
from kdlab.engine.registry import Catalogue
from kdlab.engine.types import DataBundle, StageView, data_kinds


def default_plugins(recipe, catalogue: Catalogue, world_size: int | None = None) -> list[str]:
    """The default-on plugins that apply to this recipe's data and are not switched off; with
    ``world_size`` 1, not those that only act across processes (None: every process count)."""
    kinds = data_kinds(recipe.data.config)
    return [n for n, p in catalogue.plugins.items()
            if p.default_enabled and n not in recipe.disabled and p.applies_to(kinds)
            and not (p.distributed_only and world_size == 1)]


def stage_plugins(recipe, catalogue: Catalogue, stage_name: str, world_size: int | None = None) -> list[str]:
    """Plugins registered for a stage: the default-on ones that apply, then its methods."""
    return default_plugins(recipe, catalogue, world_size) + list(recipe.stages[stage_name].methods)


def stage_configs(recipe, stage_name: str) -> dict[str, Any]:
    """Plugin name -> the structured table it is built with, for one stage."""
    return {**recipe.plugins, **recipe.stages[stage_name].methods}


def stage_view(recipe, name: str) -> StageView:
    """What a plugin sees of stage ``name`` when it is built (and its ``requires``)."""
    cfg = recipe.stages[name]
    says = getattr(recipe.data.config, "augments_inputs", None)
    return StageView(name=name, epochs=cfg.epochs, teachers=tuple(cfg.teachers), methods=tuple(cfg.methods),
                     student_taps=tuple(cfg.taps.student),
                     teacher_taps=tuple(tuple(cfg.taps.for_teacher(ref)) for ref in cfg.teachers),
                     data=recipe.data.config, augmented=says(recipe.data.name) if says is not None else None,
                     data_kinds=data_kinds(recipe.data.config))


def stage_manager(recipe, catalogue: Catalogue, stage_name: str, world_size: int = 1):
    """A plugin manager with the stage's plugins built for it (configs and view)."""
    return catalogue.manager(stage_plugins(recipe, catalogue, stage_name, world_size),
                             stage_configs(recipe, stage_name), stage_view(recipe, stage_name))


def build_data(catalogue: Catalogue, recipe) -> DataBundle:
    """The run's data, made by the builder registered for ``[data] dataset``."""
    if recipe.data.name not in catalogue.datasets:
        raise KdlabError(f"no installed plugin provides data set '{recipe.data.name}'")
    return catalogue.datasets[recipe.data.name].build(recipe.data.config, recipe.seed)
