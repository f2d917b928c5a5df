"""The training loop of one stage. Every hook (see ``hookspecs.py``) is named where it fires::

    fit(stage):
        seed the RNG from the recipe seed
        student  = the builder registered for the model's arch
        load `init` weights                                 # if the stage names one
        teachers = kdlab_load_teachers(stage)              # firstresult; frozen, eval mode
        attach feature taps to student and teachers
        kdlab_stage_start(stage)
        extra    = kdlab_extra_modules(stage, probe)       # collected; only if implemented
        optimizer = kdlab_configure_optimizer(stage, params)
        scheduler = kdlab_configure_scheduler(stage, optimizer)
        state = kdlab_resume_state(stage)                   # firstresult; then
            stage.load_state_dict(state) -> kdlab_load_state_dict(stage, state) per plugin
        for epoch in range(stage.epoch, epochs):
            kdlab_epoch_start(stage, epoch)
            for step in train, `accumulate` batches at a time:  # stage.micro_batches
              for batch in step:                               # stage.batch = batch
                student_out  = kdlab_student_forward(stage, batch)       # firstresult
                teacher_outs = kdlab_teacher_outputs(stage, batch)       # firstresult, if a loss plugin takes them
                terms = kdlab_loss_terms(stage, batch, student_out, teacher_outs)   # collected
                loss  = sum(loss_weights[name] * term)        # deferred terms: one call per group
                kdlab_backward(stage, loss * batch's share of step)      # firstresult
                kdlab_before_optimizer_step(stage)
                kdlab_optimizer_step(stage)                               # firstresult
                kdlab_after_optimizer_step(stage)
                kdlab_step_end(stage, loss, terms)                        # scheduler.step() here with interval = "step"
            stop with an error if the loss is not finite                  # one sync per epoch
            scheduler.step()                                              # with interval = "epoch"
            metrics = evaluate("val"):                                    # every eval_every epochs (and "test" with eval_test)
                kdlab_eval_start(stage, split)
                for batch in val: kdlab_eval_batch(stage, split, batch, output, teacher_outputs)
                kdlab_eval_metrics(stage, split)                          # collected, merged
            kdlab_epoch_end(stage, epoch, metrics)                        # checkpoints written here
    on Ctrl-C / SIGTERM while training: kdlab_interrupted(stage), then the run stops
        metrics = evaluate("val") + evaluate("test")
        kdlab_stage_end(stage, metrics)                                   # e.g. pruning made permanent
        export the student; add params, MACs, bytes, latency to metrics  # rank 0 only
        kdlab_stage_summary(stage, metrics)
"""

from __future__ import annotations

import math
import warnings

import torch

from kdlab.engine import checkpoint, collective
from kdlab.engine.errors import KdlabError
from kdlab.engine.recipe import CONVERTER, structure_stored
from kdlab.engine.registry import PluginDeprecationWarning
from kdlab.engine.stats import model_stats
from kdlab.engine.types import Accumulation, Batch, DeferredTerm, ModelOutput, ModelSpec, Stage, Taps, cat_padded


def fit(stage: Stage) -> dict[str, float]:
    hook, cfg = stage.hook, stage.config
    _build_models(stage)
    hook.kdlab_stage_start(stage=stage)
    if hook.kdlab_extra_modules.get_hookimpls():
        for extra in hook.kdlab_extra_modules(stage=stage, probe=_probe(stage)):
            for name, module in extra.items():
                if name in stage.extra:
                    raise KdlabError(f"stage {stage.name}: two plugins add an extra module named '{name}'")
                stage.extra[name] = module.to(stage.device)
    stage.optimizer = hook.kdlab_configure_optimizer(stage=stage, params=stage.trainable_parameters())
    stage.scheduler = hook.kdlab_configure_scheduler(stage=stage, optimizer=stage.optimizer)
    state = hook.kdlab_resume_state(stage=stage)
    if state is not None:
        try:
            stage.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise KdlabError(f"stage {stage.name}: the checkpoint does not fit this stage's models and "
                             f"optimizer ({checkpoint.first_lines(exc)}); delete checkpoints/{stage.name} to restart it") from exc

    # the teachers run in training only if a loss plugin takes their outputs: a student trained
    # alone in a sweep whose stage lists a teacher (for its metrics, say) does not pay for them
    train_teachers = bool(stage.teachers) and any(
        "teacher_outs" in impl.argnames for impl in hook.kdlab_loss_terms.get_hookimpls()
        if not (impl.wrapper or impl.hookwrapper))
    try:
        _train(stage, train_teachers)
    except KeyboardInterrupt:
        hook.kdlab_interrupted(stage=stage)
        raise

    metrics = {**evaluate(stage, "val"), **evaluate(stage, "test")}
    hook.kdlab_stage_end(stage=stage, metrics=metrics)
    for taps in [stage.student_taps, *stage.teacher_taps]:
        taps.remove()
    if stage.is_main:  # in distributed training every rank holds the same model; one writes it
        checkpoint.export_model(
            stage.run_dir / "models" / f"{stage.name}.pt",
            model=stage.student,
            arch=cfg.model.arch,
            config=plain_config(cfg.model.config),
            num_classes=stage.data.num_classes,
            input_shape=stage.data.input_shape,
            classes=stage.data.classes,
        )
        metrics.update(model_stats(stage.student, stage.data.input_shape, _batch_size(stage)))
    hook.kdlab_stage_summary(stage=stage, metrics=metrics)
    return metrics


def label_stage(stage: Stage, splits: list[str]) -> None:
    """``kdlab label``: the stage set up as for training, then the teachers' outputs asked for
    once per split in ``splits``, and nothing trained. A cache plugin answering
    ``kdlab_teacher_outputs`` (``teacher_cache``) builds, or reads, each split's store on the
    first lookup, exactly as the training of the stage would."""
    _build_models(stage)
    stage.hook.kdlab_stage_start(stage=stage)
    try:
        for split in splits:
            loader = getattr(stage.data, split)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(0)
            phase, stage.phase = stage.phase, split
            try:
                batch = next(iter(loader)).to(stage.device)
                stage.hook.kdlab_teacher_outputs(stage=stage, batch=batch)
            finally:
                stage.phase = phase
    finally:
        for taps in [stage.student_taps, *stage.teacher_taps]:
            taps.remove()


def _build_models(stage: Stage) -> None:
    """The student (from ``init`` if set), the frozen teachers and the taps of both."""
    hook, cfg = stage.hook, stage.config
    # Same seed for every stage: two students of the same architecture start from the same
    # weights, so a KD stage and its baseline differ only by the method.
    torch.manual_seed(stage.recipe.seed)
    stage.student = build_model(stage, cfg.model).to(stage.device)
    if cfg.init is not None:
        checkpoint.load_weights(stage.student, load_model(stage, cfg.init).state_dict(), f"stages.{stage.name}.init = '{cfg.init}'")
    if cfg.teachers:
        stage.teachers = hook.kdlab_load_teachers(stage=stage)
        for teacher in stage.teachers:
            teacher.to(stage.device).train(False).requires_grad_(False)
    stage.student_taps = Taps(stage.student, cfg.taps.student, f"stages.{stage.name}.taps.student")
    stage.teacher_taps = [
        Taps(t, cfg.taps.for_teacher(ref), f"stages.{stage.name}.taps.teacher" + (f"s.{ref}" if ref in cfg.taps.teachers else ""))
        for ref, t in zip(cfg.teachers, stage.teachers)
    ]


def _train(stage: Stage, train_teachers: bool) -> None:
    """The epochs of the stage not done yet."""
    hook, cfg, weights = stage.hook, stage.config, stage.config.loss_weights
    per_step = cfg.scheduler.interval == "step"
    for epoch in range(stage.epoch, cfg.epochs):
        if stage.budget_spent:
            break  # the step or token budget ran out first (also on a resume after it)
        stage.phase = "train"
        stage.data.train.set_epoch(epoch)  # shuffling is a function of (seed, epoch): resumable
        stage.student.train()
        stage.extra.train()
        hook.kdlab_epoch_start(stage=stage, epoch=epoch)
        for window in _windows(stage.data.train, cfg.accumulate):
            if stage.budget_spent:
                break
            stage.micro_batches, stage.step_samples = tuple(window), 0
            if cfg.accumulate > 1:
                loss, terms = _accumulated_step(stage, window, train_teachers, weights)
            else:
                loss, terms = _micro_step(stage, window[0], train_teachers, weights)
            hook.kdlab_before_optimizer_step(stage=stage)
            try:
                hook.kdlab_optimizer_step(stage=stage)
            except RuntimeError as exc:  # a finite lr so large that the update leaves float range
                if "overflow" not in str(exc):
                    raise
                raise KdlabError(f"stage {stage.name}: the optimizer step overflowed in epoch {epoch + 1} ({exc}); "
                                 "lower the learning rate; the last checkpoint is from before") from exc
            hook.kdlab_after_optimizer_step(stage=stage)
            stage.step += 1
            stage.tokens += _positions(stage)
            if per_step and stage.scheduler is not None:
                stage.scheduler.step()
            hook.kdlab_step_end(stage=stage, loss=loss.detach(), terms={k: t.detach() for k, t in terms.items()})
        # One sync per epoch: stop before a diverged state is checkpointed over the last good one.
        if not torch.isfinite(loss):
            raise KdlabError(f"stage {stage.name}: the loss became {loss.item()} in epoch {epoch + 1} "
                             f"(terms: {', '.join(f'{k}={t.item():.4g}' for k, t in terms.items())}); "
                             "lower the learning rate or a loss weight; the last checkpoint is from before")
        if stage.scheduler is not None and not per_step:
            stage.scheduler.step()
        last = epoch + 1 == cfg.epochs or stage.budget_spent
        due = (epoch + 1) % cfg.eval_every == 0 or last
        metrics = evaluate(stage, "val") if due else {}
        if due and cfg.eval_test:
            metrics.update(evaluate(stage, "test"))
        stage.epoch = epoch + 1
        hook.kdlab_epoch_end(stage=stage, epoch=epoch, metrics=metrics)


def _windows(loader, n: int):
    """The loader's batches in lists of ``n`` (one optimizer step each; the last may be shorter)."""
    window = []
    for batch in loader:
        window.append(batch)
        if len(window) == n:
            yield window
            window = []
    if window:
        yield window


def _positions(stage: Stage) -> int:
    """The input positions of a step, all processes (for text: its sequences x seq_len)."""
    per_sample = math.prod(stage.data.input_shape) if stage.data.input_shape else 1
    return stage.step_samples * per_sample


def _valid(batch: Batch) -> int:
    """A batch's valid targets: those >= 0 (tokens, frames; -1 pads), or its samples."""
    t = batch.targets
    return len(batch.index) if t.is_floating_point() else int((t >= 0).sum())


def _accumulated_step(stage: Stage, window: list[Batch], train_teachers: bool, weights: dict):
    """One optimizer step's gradient over the micro-batches of ``window``, each loss weighted by
    the micro-batch's share of the step's samples (Stage.mean_divisor has the token losses).
    The valid targets of every micro-batch are counted first (on a GPU: one wait per micro-batch)."""
    sizes = [collective.shard_sizes(b) if stage.world_size > 1 else [len(b.index)] for b in window]
    valid = [_valid(b) for b in window]
    if stage.world_size > 1:
        valid = collective.sum_counts(valid)
    samples, valid_total = sum(map(sum, sizes)), sum(valid)
    loss, terms = None, {}
    stage.optimizer.zero_grad(set_to_none=True)
    try:
        for batch, size, n in zip(window, sizes, valid):
            acc = Accumulation(share=sum(size) / max(samples, 1), valid=n, valid_total=valid_total)
            part, part_terms = _micro_step(stage, batch, train_teachers, weights, acc, size, zero_grad=False)
            loss = part if loss is None else loss + part
            for name, term in part_terms.items():
                terms[name] = terms[name] + term if name in terms else term
    finally:
        stage.accumulation = None
    return loss, terms


def _micro_step(stage: Stage, batch: Batch, train_teachers: bool, weights: dict, acc: Accumulation | None = None,
                size: list[int] | None = None, zero_grad: bool = True):
    """Forward, loss and backward of one (micro-)batch -> (its loss, its terms), both weighted by
    its share of the step under accumulation."""
    hook = stage.hook
    batch = stage.batch = batch.to(stage.device)
    stage.accumulation = acc
    if stage.world_size > 1:  # what stage.gather needs to rebuild the global batch
        stage.shard_sizes = size if size is not None else collective.shard_sizes(batch)
    stage.step_samples += sum(stage.shard_sizes) if stage.world_size > 1 else len(batch.index)
    if len(batch.index) == 0:
        # only in distributed training: this rank's share of a last global batch smaller
        # than the number of processes. It computes nothing but joins the gradient
        # exchange in kdlab_backward, so every rank steps on the same averaged gradient.
        terms, loss = {}, torch.zeros((), device=stage.device, requires_grad=True)
    else:
        student_out = hook.kdlab_student_forward(stage=stage, batch=batch)
        teacher_outs = hook.kdlab_teacher_outputs(stage=stage, batch=batch) if train_teachers else []
        terms = _merge_terms(stage, hook.kdlab_loss_terms(
            stage=stage, batch=batch, student_out=student_out, teacher_outs=teacher_outs))
        terms, loss = _weighted_sum(terms, weights)
        if stage.step == 0:
            _check_finite(stage, terms)
        if acc is not None:
            # a token loss's divisor already holds the share (Stage.mean_divisor); a per-sample
            # mean's does not: the share weights both alike
            loss = loss * acc.share
            terms = {name: term * acc.share for name, term in terms.items()}
    if zero_grad:
        stage.optimizer.zero_grad(set_to_none=True)
    hook.kdlab_backward(stage=stage, loss=loss)
    return loss, terms


def evaluate(stage: Stage, split: str) -> dict[str, float]:
    """Run the student (and the teachers, if a metric takes their outputs) over a split, batch by
    batch: each batch goes to ``kdlab_eval_batch`` and is dropped, so nothing of a split is held
    here; then the plugins give their metrics from what they accumulated. (A plugin whose
    ``kdlab_eval_metrics`` still takes the whole split's outputs gets them concatenated, with a
    deprecation warning: only it makes this function hold a split.)"""
    loader = getattr(stage.data, split)
    if loader is None:
        return {}
    hook = stage.hook
    legacy = [impl for impl in hook.kdlab_eval_metrics.get_hookimpls()
              if {"output", "targets", "teacher_outputs"} & set(impl.argnames)]
    for impl in legacy:
        warnings.warn(f"plugin '{impl.plugin_name}': kdlab_eval_metrics takes the whole split's outputs "
                      "(output, targets, teacher_outputs), which holds a split in memory; accumulate them "
                      "in kdlab_eval_batch and return the metrics from kdlab_eval_metrics(stage, split) "
                      "(see CONTRIBUTING.md)", PluginDeprecationWarning, stacklevel=2)
    # the teachers run only if a metric plugin takes their outputs
    with_teachers = bool(stage.teachers) and any(
        "teacher_outputs" in impl.argnames
        for impl in [*hook.kdlab_eval_batch.get_hookimpls(), *legacy])
    stage.student.train(False)
    phase, stage.phase = stage.phase, split
    hook.kdlab_eval_start(stage=stage, split=split)
    outputs, teacher_outputs, targets = [], [], []  # only for the deprecated whole-split plugins
    seen = False
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(stage.device)
            output = hook.kdlab_student_forward(stage=stage, batch=batch)
            teachers = hook.kdlab_teacher_outputs(stage=stage, batch=batch) if with_teachers else []
            hook.kdlab_eval_batch(stage=stage, split=split, batch=batch, output=output, teacher_outputs=teachers)
            seen = True
            if legacy:
                outputs.append(output)
                teacher_outputs.append(teachers)
                targets.append(batch.targets)
    stage.phase = phase
    if not seen:
        return {}
    whole = {"output": None, "targets": None, "teacher_outputs": []}
    if legacy:
        whole = {"output": ModelOutput.cat(outputs), "targets": cat_padded(targets, -1),
                 "teacher_outputs": [ModelOutput.cat(list(outs)) for outs in zip(*teacher_outputs)]}
    metrics = {}
    for result in hook.kdlab_eval_metrics(stage=stage, split=split, **whole):
        metrics.update({f"{split}/{k}": float(val) for k, val in result.items()})
    return metrics


def build_model(stage: Stage, spec: ModelSpec) -> torch.nn.Module:
    """A freshly initialised model, made by the builder registered for ``spec.arch``."""
    if spec.arch not in stage.catalogue.models:
        raise KdlabError(f"stage {stage.name}: no installed plugin provides model arch '{spec.arch}'")
    return stage.catalogue.models[spec.arch].build(spec.config, stage.data)


def load_model(stage: Stage, ref: str) -> torch.nn.Module:
    """Rebuild an exported model (an earlier stage's, or a file) with its weights."""
    path = stage.resolve_model_ref(ref)
    if ref not in stage.recipe.stages and not path.is_file():
        raise KdlabError(f"stages.{stage.name}: model file '{ref}' does not exist; it must exist when this stage "
                         "starts (run the recipe that exports it first)")
    data = checkpoint.load_model_file(path)
    spec = exported_spec(stage.catalogue, data, path)
    if data["num_classes"] != stage.data.num_classes:
        raise KdlabError(f"{path}: model has {data['num_classes']} classes, the data has {stage.data.num_classes}")
    model = build_model(stage, spec)
    checkpoint.load_weights(model, data["state_dict"], str(path))
    return model


def rebuild_exported(path, catalogue=None) -> torch.nn.Module:
    """An exported model file (``RUN_DIR/models/<stage>.pt``) rebuilt with its weights, in eval
    mode, outside any run (``kdlab export``): its architecture from the installed plugins."""
    from types import SimpleNamespace

    from kdlab.engine.registry import discover

    catalogue = catalogue or discover()
    data = checkpoint.load_model_file(path)
    spec = exported_spec(catalogue, data, path)
    shape = SimpleNamespace(num_classes=data["num_classes"], input_shape=tuple(data["input_shape"]),
                            classes=tuple(data["classes"]))
    model = catalogue.models[spec.arch].build(spec.config, shape)
    checkpoint.load_weights(model, data["state_dict"], str(path))
    return model.train(False)


def exported_spec(catalogue, data: dict, path) -> ModelSpec:
    """The architecture and settings of a loaded model file, structured by its registered class."""
    registry = catalogue.models
    if data["arch"] not in registry:
        raise KdlabError(f"{path}: model arch '{data['arch']}' is not provided by any installed plugin")
    return ModelSpec(arch=data["arch"], config=structure_stored(data["config"], registry[data["arch"]].config_class, path))


def _probe(stage: Stage) -> tuple[ModelOutput, list[ModelOutput]]:
    """Outputs for one training batch (eval mode, no grad) so plugins can size their modules."""
    stage.data.train.set_epoch(0)
    batch = next(iter(stage.data.train)).to(stage.device)
    stage.student.train(False)
    with torch.no_grad():
        student_out = stage.hook.kdlab_student_forward(stage=stage, batch=batch)
        teacher_outs = stage.hook.kdlab_teacher_outputs(stage=stage, batch=batch) if stage.teachers else []
    return student_out, teacher_outs


def _merge_terms(stage: Stage, results: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    terms: dict[str, torch.Tensor] = {}
    for result in results:
        for name, term in result.items():
            if name in terms:
                raise KdlabError(
                    f"stage {stage.name}: two methods return the loss term '{name}' "
                    f"(methods: {', '.join(stage.config.methods)}); enable only one of them"
                )
            terms[name] = term
    if not terms:
        raise KdlabError(
            f"stage {stage.name}: no method returned a loss term; enable one under "
            f"[stages.{stage.name}.methods] (e.g. supervised)"
        )
    if stage.step == 0:
        unknown = sorted(set(stage.config.loss_weights) - set(terms))
        if unknown:
            raise KdlabError(
                f"stages.{stage.name}.loss_weights names {', '.join(unknown)}, but the methods "
                f"return only: {', '.join(sorted(terms))}"
            )
    return terms


def _check_finite(stage: Stage, terms: dict[str, torch.Tensor]) -> None:
    for name, term in terms.items():
        if not math.isfinite(float(term.detach())):
            raise KdlabError(f"stage {stage.name}: loss term '{name}' is not finite at the first step")


def _weighted_sum(terms: dict, weights: dict[str, float]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """-> (every term's value, the weighted sum). A :class:`DeferredTerm` is evaluated with the
    others of its group in one call, which gives the group's weighted sum and each one's value."""
    # written out rather than sum(): no 0 + tensor, no multiplication by a weight of 1
    loss, values, groups = None, {}, {}
    for name, term in terms.items():
        weight = weights.get(name, 1.0)
        if isinstance(term, DeferredTerm):
            groups.setdefault((type(term), term.group_key()), []).append((name, term, weight))
            continue
        values[name] = term
        term = term if weight == 1.0 else weight * term
        loss = term if loss is None else loss + term
    for (kind, _), members in groups.items():
        part, parts = kind.evaluate([t for _, t, _ in members], [w for _, _, w in members])
        values.update((name, value) for (name, _, _), value in zip(members, parts))
        loss = part if loss is None else loss + part
    return {name: values[name] for name in terms}, loss


def plain_config(config) -> dict:
    return CONVERTER.unstructure(config)


def _batch_size(stage: Stage) -> int:
    return getattr(stage.recipe.data.config, "batch_size", 1)
