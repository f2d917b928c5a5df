"""Checks ``kdlab validate`` makes beyond the recipe's own keys, by building what a run would
build without training: every tap path names a module of the model it taps, every class a
method is restricted to (``classes``, e.g. supervised's) is one of the data set's classes, and
a stage's ``init`` from an earlier stage has weights of the shapes its model needs. And, without
building anything, what each method declares it needs of its stage (:func:`check_requirements`).

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
from kdlab.engine.plan import build_data, default_plugins, stage_view
from kdlab.engine.recipe import Recipe, locate
from kdlab.engine.registry import Catalogue
from kdlab.engine.types import ModelSpec, Requirements

log = logging.getLogger("kdlab")


def check_taps(recipe: Recipe, catalogue: Catalogue, recipe_file: str | Path, data=None) -> None:
    """Raise a RecipeError naming file, line and key for every tap path no module answers to.
    ``data``: the run's data if built already (``kdlab run`` checks before the first stage)."""
    tapped = {name: cfg for name, cfg in recipe.stages.items()
              if cfg.taps.student or cfg.taps.teacher or cfg.taps.teachers}
    restricted = {(name, method): tuple(table.classes) for name, cfg in recipe.stages.items()
                  for method, table in cfg.methods.items() if getattr(table, "classes", None)}
    inits = {name: cfg.init for name, cfg in recipe.stages.items()
             if cfg.init in recipe.stages and recipe.stages[cfg.init].model.arch == cfg.model.arch}
    if not tapped and not restricted and not inits:
        return
    if data is None:
        try:
            data = build_data(catalogue, recipe)
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
    for name, source in inits.items():  # init copies weights: the two models must have the same shapes
        shapes = [_shapes(catalogue, recipe.stages[s].model, data) for s in (name, source)]
        if shapes[0] != shapes[1]:
            differ = sorted(k for k in set(shapes[0]) | set(shapes[1]) if shapes[0].get(k) != shapes[1].get(k))
            key_path = ("stages", name, "init")
            problems.append(f"{locate(recipe_file, key_path)}: stages.{name}.init = '{source}': its weights do not fit "
                            f"this stage's model ({len(differ)} tensors differ in shape, e.g. {differ[0]}: "
                            f"{shapes[1].get(differ[0])} vs {shapes[0].get(differ[0])}) @ $.{'.'.join(key_path)}")
    for name, cfg in tapped.items():
        models = [("student", cfg.model, cfg.taps.student)]
        for ref in cfg.teachers:
            key = f"teachers.{ref}" if ref in cfg.taps.teachers else "teacher"
            if ref not in recipe.stages and not Path(ref).is_file():  # exported by a later run: unknown yet
                log.warning("stage %s: the taps of teacher '%s' are checked when the stage starts (no file yet)",
                            name, ref)
                continue
            models.append((key, _teacher_spec(recipe, catalogue, ref), cfg.taps.for_teacher(ref)))
        for key, spec, paths in models:
            if not paths:
                continue
            modules = {n for n, _ in _on_meta(catalogue, spec, data).named_modules() if n}
            for alias, path in paths.items():
                if path not in modules:
                    near = difflib.get_close_matches(path, sorted(modules), n=6) or sorted(modules)[:6]
                    key_path = ("stages", name, "taps", *key.split("."), alias)
                    problems.append(f"{locate(recipe_file, key_path)}: no module '{path}' in the {spec.arch} "
                                    f"{key.split('.')[0].rstrip('s')}; some that exist: {', '.join(near)} "
                                    f"@ $.{'.'.join(key_path)}")
    if problems:
        raise RecipeError(problems)


def _on_meta(catalogue: Catalogue, spec: ModelSpec, data) -> torch.nn.Module:
    """The model a run would build, on the meta device (shapes, no memory)."""
    with torch.device("meta"):
        return catalogue.models[spec.arch].build(spec.config, data)


def _shapes(catalogue: Catalogue, spec: ModelSpec, data) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in _on_meta(catalogue, spec, data).state_dict().items()}


def _teacher_spec(recipe: Recipe, catalogue: Catalogue, ref: str) -> ModelSpec:
    if ref in recipe.stages:
        return recipe.stages[ref].model
    return exported_spec(catalogue, checkpoint.load_model_file(ref), ref)


def check_requirements(recipe: Recipe, catalogue: Catalogue, recipe_file: str | Path) -> None:
    """Raise a RecipeError naming file, line and key for every need of a stage's methods that
    the recipe does not meet (:class:`~kdlab.engine.types.Requirements`, declared by each
    method's ``requires``), and for an ``init`` from a stage of another architecture. Needs no
    data and builds nothing: ``kdlab validate`` and ``kdlab run`` call it before any stage trains."""
    problems: list[str] = []

    def add(key_path: tuple, message: str) -> None:
        problems.append(f"{locate(recipe_file, key_path)}: {message} @ $.{'.'.join(key_path)}")

    for name, cfg in recipe.stages.items():
        view = stage_view(recipe, name)
        declared: dict[str, Requirements | None] = {}
        # the stage's methods, and default-on plugins that add loss terms of their own
        term_plugins = [(p, None) for p in default_plugins(recipe, catalogue)
                        if "kdlab_loss_terms" in catalogue.plugins[p].hooks]
        for method, table in [*cfg.methods.items(), *term_plugins]:
            info = catalogue.plugins.get(method)
            where = ("stages", name, "methods", method)
            if info is not None and info.data_kinds is not None and view.data_kinds is not None \
                    and not info.data_kinds & view.data_kinds:
                add(where, f"stages.{name}.methods.{method} works on {', '.join(sorted(info.data_kinds))} data; "
                           f"data set '{recipe.data.name}' is {', '.join(sorted(view.data_kinds))}")
                declared[method] = None
                continue
            requires = getattr(info.factory, "requires", None) if info is not None else None
            if requires is None:
                declared[method] = None
                continue
            try:
                needs = requires(table, view)
            except Exception as exc:  # a plugin author's mistake: name the plugin
                raise KdlabError(f"plugin '{method}' ({info.origin}): its requires() failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(needs, Requirements):
                raise KdlabError(f"plugin '{method}' ({info.origin}): requires() must return kdlab.Requirements, "
                                 f"got {type(needs).__name__}")
            declared[method] = needs
            if len(cfg.teachers) < needs.teachers:
                add(("stages", name, "teachers") if cfg.teachers else where,
                    f"stages.{name}.methods.{method} needs {needs.teachers} teacher{'s' if needs.teachers > 1 else ''}, "
                    f"the stage lists {len(cfg.teachers)}; set stages.{name}.teachers")
                continue
            student_key, teacher_key = needs.tap_keys
            for alias in needs.student_taps:
                if alias not in cfg.taps.student:
                    add((*where, student_key), f"stages.{name}.methods.{method}.{student_key}: no tap '{alias}' in "
                                               f"stages.{name}.taps.student (taps: {', '.join(cfg.taps.student) or 'none'})")
            for index, aliases in needs.teacher_taps:
                for i in range(len(cfg.teachers)) if index is None else [index]:
                    if i >= len(cfg.teachers):
                        continue  # the method's own problems say so
                    ref = cfg.teachers[i]
                    table_name = f"taps.teachers.{ref}" if ref in cfg.taps.teachers else "taps.teacher"
                    for alias in aliases:
                        if alias not in view.teacher_taps[i]:
                            add((*where, teacher_key), f"stages.{name}.methods.{method}.{teacher_key}: no tap '{alias}' "
                                                       f"in stages.{name}.{table_name} (taps: "
                                                       f"{', '.join(view.teacher_taps[i]) or 'none'})")
            for key, message in needs.problems:
                add((*where, key), f"stages.{name}.methods.{method}.{key}: {message}")
        _check_terms(name, cfg, declared, add)
        if cfg.init in recipe.stages and recipe.stages[cfg.init].model.arch != cfg.model.arch:
            add(("stages", name, "init"), f"stages.{name}.init = '{cfg.init}': a {recipe.stages[cfg.init].model.arch} "
                                          f"model, but this stage trains a {cfg.model.arch}; init copies weights "
                                          "between models of one architecture")
    if problems:
        raise RecipeError(problems)


def _check_terms(name: str, cfg, declared: dict, add) -> None:
    """The stage's loss terms, when every method declares its own."""
    if any(needs is None or needs.terms is None for needs in declared.values()):
        return  # a method that does not say: the loop checks at the first step
    owners: dict[str, str] = {}
    for method, needs in declared.items():
        for term in sorted(needs.terms):
            if term in owners:
                add(("stages", name, "methods", method),
                    f"stage {name}: methods {owners[term]} and {method} both return the loss term '{term}'; "
                    "enable only one of them")
            owners.setdefault(term, method)
    if not owners:
        add(("stages", name), f"stage {name}: no method returns a loss term (methods: "
                              f"{', '.join(declared) or 'none'}); enable one under [stages.{name}.methods] "
                              "(e.g. supervised)")
        return
    for term in sorted(set(cfg.loss_weights) - set(owners)):
        add(("stages", name, "loss_weights", term),
            f"stages.{name}.loss_weights names '{term}', but the methods return only: {', '.join(sorted(owners))}")
