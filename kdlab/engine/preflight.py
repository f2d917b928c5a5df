"""Checks ``kdlab validate`` makes beyond the recipe's own keys, by building what a run would
build without training: every tap path names a module of the model it taps, and every class a
method is restricted to (``classes``, e.g. supervised's) is one of the data set's classes.

The models are built on the meta device (shapes, no memory, no initialisation cost); the data
is built as a run would build it (its shapes size the models), and only when a stage has taps.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import torch

from kdlab.engine import checkpoint
from kdlab.engine.errors import KdlabError, RecipeError
from kdlab.engine.loop import exported_spec
from kdlab.engine.recipe import Recipe, locate
from kdlab.engine.registry import Catalogue
from kdlab.engine.types import ModelSpec

log = logging.getLogger("kdlab")


def check_taps(recipe: Recipe, catalogue: Catalogue, recipe_file: str | Path, data=None) -> None:
    """Raise a RecipeError naming file, line and key for every tap path no module answers to.
    ``data``: the run's data if built already (``kdlab run`` checks before the first stage)."""
    from kdlab.engine.runner import build_data, stage_plugins

    tapped = {name: cfg for name, cfg in recipe.stages.items()
              if cfg.taps.student or cfg.taps.teacher or cfg.taps.teachers}
    restricted = {(name, method): tuple(table.classes) for name, cfg in recipe.stages.items()
                  for method, table in cfg.methods.items() if getattr(table, "classes", None)}
    if not tapped and not restricted:
        return
    if data is None:
        defaults = [n for n, p in catalogue.plugins.items() if p.default_enabled and n not in recipe.disabled]
        try:
            data = build_data(catalogue.manager(defaults), catalogue, recipe)
        except KdlabError as exc:  # e.g. validating on a machine without the data files
            log.warning("tap paths and classes not checked: the data cannot be built here (%s)", exc)
            return
    problems = []
    for (name, method), classes in restricted.items():
        outside = sorted({c for c in classes if c >= data.num_classes})
        if outside:
            key_path = ("stages", name, "methods", method, "classes")
            problems.append(f"{locate(recipe_file, key_path)}: class{'es' if len(outside) > 1 else ''} "
                            f"{', '.join(map(str, outside))} not in the data set (it has {data.num_classes} "
                            f"classes, 0 to {data.num_classes - 1}) @ $.{'.'.join(key_path)}")
    for name, cfg in tapped.items():
        pm = catalogue.manager(stage_plugins(recipe, catalogue, name))
        models = [("student", cfg.model, cfg.taps.student)]
        for ref in cfg.teachers:
            key = f"teachers.{ref}" if ref in cfg.taps.teachers else "teacher"
            models.append((key, _teacher_spec(recipe, catalogue, ref), cfg.taps.for_teacher(ref)))
        for key, spec, paths in models:
            if not paths:
                continue
            with torch.device("meta"):
                model = pm.hook.kdlab_build_model(spec=spec, data=data)
                if model is None:
                    model = catalogue.models[spec.arch].build(spec.config, data)
            modules = {n for n, _ in model.named_modules() if n}
            for alias, path in paths.items():
                if path not in modules:
                    near = difflib.get_close_matches(path, sorted(modules), n=6) or sorted(modules)[:6]
                    key_path = ("stages", name, "taps", *key.split("."), alias)
                    problems.append(f"{locate(recipe_file, key_path)}: no module '{path}' in the {spec.arch} "
                                    f"{key.split('.')[0].rstrip('s')}; some that exist: {', '.join(near)} "
                                    f"@ $.{'.'.join(key_path)}")
    if problems:
        raise RecipeError(problems)


def _teacher_spec(recipe: Recipe, catalogue: Catalogue, ref: str) -> ModelSpec:
    if ref in recipe.stages:
        return recipe.stages[ref].model
    return exported_spec(catalogue, checkpoint.load_model_file(ref), ref)
