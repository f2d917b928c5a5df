"""Every hook point of kdlab, in the order they fire.

A plugin is a class (instantiated afresh for every stage, so ``self`` is per-stage state) or a
module, declared under the ``kdlab.plugins`` entry-point group. It implements any of the hooks
below with ``@kdlab.hookimpl``; pluggy lets an implementation take any subset of the arguments.

Return-value conventions (what the caller does with what you return):

* *collected*: every implementation is called, the results come back as a list (``None``
  results are dropped). Loss terms, metrics and config registries work this way.
* *firstresult*: implementations are called until one returns something other than ``None``;
  that object is used. Built-in defaults are ``trylast``, so any plugin can supply its own.
* *notification*: the return value is ignored.

Order between plugins is declared with ``tryfirst=True`` / ``trylast=True`` on the hookimpl,
never by registration order. ``kdlab validate`` prints the resulting order for each hook.

Objects passed around (defined in :mod:`kdlab.engine.types`): ``stage`` (:class:`Stage`, the
context of the running stage: its config, models, optimizer, data, epoch, step), ``batch``
(:class:`Batch`: ``inputs``, ``targets``, ``index``), :class:`ModelOutput` (``logits`` and
``features``, the outputs of the tapped modules by alias).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdlab.engine.types import Batch, ModelOutput, Stage

PROJECT = "kdlab"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------
# Declaration: called once per plugin when plugins are discovered, before anything trains.
# --------------------------------------------------------------------------------------------


@hookspec
def kdlab_config_class() -> type | None:
    """Return the frozen attrs class that structures this plugin's recipe table.

    Most plugins instead set the class attribute ``config_class = MyConfig``, which the core reads
    when this hook is not implemented; implement the hook only to compute the class.

    Fires: when plugins are discovered, once per installed plugin (the core attributes the answer
    to the plugin that gave it). A method plugin's table is ``[stages.<stage>.methods.<name>]``
    (or ``[defaults.methods.<name>]`` for every stage); a plugin with ``default_enabled = True``
    reads ``[plugins.<name>]``. ``<name>`` is the plugin's entry-point name. The key ``enabled``
    is reserved by the core. The plugin reads its structured table with
    its structured table as the ``config`` argument of its constructor,
    ``__init__(self, config)`` (or ``__init__(self, config, stage)`` for the
    :class:`~kdlab.StageView` too), when it is built for a stage.

    Returns: an attrs class, or None if the plugin takes no settings (collected, per plugin).
    """


@hookspec
def kdlab_register_datasets(datasets: Any) -> None:
    """Register data sets: ``datasets.add(name, ConfigClass, build)``.

    Fires: when plugins are discovered. ``[data] dataset = "<name>"`` selects the entry: the rest
    of the ``[data]`` table is structured into ``ConfigClass`` and, once per run before the first
    stage, ``build(config, seed) -> DataBundle`` makes the loaders (``seed`` is the recipe seed).
    A name registered twice is an error naming both plugins. Notification.
    """


@hookspec
def kdlab_register_models(models: Any) -> None:
    """Register model architectures: ``models.add(arch, ConfigClass, build)``.

    Fires: when plugins are discovered. ``[stages.<s>.model] arch = "<arch>"`` selects the entry:
    the rest of the model table is structured into ``ConfigClass``, and
    ``build(config, data) -> nn.Module`` makes a freshly initialised model (``data`` has
    ``num_classes``, ``input_shape``, ``classes``). An arch registered twice is an error naming
    both plugins. Notification.
    """


# --------------------------------------------------------------------------------------------
# Construction: the objects a stage trains with (firstresult; defaults are trylast built-ins).
# Data sets and models are not built through hooks: their entry points (kdlab.datasets,
# kdlab.models) or kdlab_register_* name the function that builds them.
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def kdlab_load_teachers(stage: Stage) -> list[nn.Module] | None:
    """Load the teachers named by ``stage.config.teachers``.

    Fires: at stage start, only when the stage names teachers. The default resolves each
    reference (an earlier stage's exported model, or a checkpoint file) with
    ``stage.resolve_model_ref`` and builds it with the architecture's registered builder.

    Returns: teacher modules in recipe order (firstresult). The core puts them in eval mode,
    freezes them and moves them to the device.
    """


@hookspec
def kdlab_extra_modules(stage: Stage, probe: tuple[ModelOutput, list[ModelOutput]]) -> dict[str, nn.Module]:
    """Add trainable modules that belong to a method, not to the student (e.g. hint adapters).

    Fires: at stage start, after ``kdlab_stage_start``, only if some plugin implements it.
    ``probe`` is ``(student_output, teacher_outputs)`` for one training batch, so shapes of
    tapped features are known. The modules are trained with the student, saved in checkpoints
    and left out of the exported model; plugins find them again in ``stage.extra[name]``.

    Returns: ``{name: module}`` (collected and merged; a name given twice is an error).
    """


@hookspec(firstresult=True)
def kdlab_configure_optimizer(stage: Stage, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
    """Create the optimizer over ``params`` (student and extra modules).

    Fires: at stage start. The default reads ``stage.config.optimizer``.

    Returns: an optimizer (firstresult).
    """


@hookspec(firstresult=True)
def kdlab_configure_scheduler(stage: Stage, optimizer: torch.optim.Optimizer) -> Any:
    """Create the learning-rate scheduler, stepped once per epoch.

    Fires: at stage start, after the optimizer. The default reads ``stage.config.scheduler``.

    Returns: an ``LRScheduler`` (firstresult), or None for a constant learning rate.
    """


# --------------------------------------------------------------------------------------------
# Stage lifecycle.
# --------------------------------------------------------------------------------------------


@hookspec
def kdlab_stage_start(stage: Stage) -> None:
    """The student and teachers exist; nothing has trained yet.

    Fires: once per stage, before extra modules, the optimizer, and resume. Re-parametrise the
    student here (pruning masks) so that a resumed checkpoint's keys match. Notification.
    """


@hookspec(firstresult=True)
def kdlab_resume_state(stage: Stage) -> dict | None:
    """Supply the state to resume this stage from (what ``stage.state_dict()`` returned).

    Fires: at stage start, after the optimizer exists. The checkpoint plugin answers with the
    stage's last checkpoint in the run directory, if there is one.

    Returns: a state dict (firstresult), or None to start from scratch.
    """


@hookspec
def kdlab_state_dict(stage: Stage) -> dict | None:
    """Return this plugin's own state to save in checkpoints (e.g. a GradScaler's).

    Fires: whenever ``stage.state_dict()`` is called (by the checkpoint plugin, at epoch end).
    The core files the answer under the plugin's name.

    Returns: a dict of tensors and plain values (loadable with ``weights_only=True``), or None.
    """


@hookspec
def kdlab_load_state_dict(stage: Stage, state: dict) -> None:
    """Restore what ``kdlab_state_dict`` returned for this plugin.

    Fires: on resume, only for plugins whose state was saved. Notification.
    """


@hookspec
def kdlab_epoch_start(stage: Stage, epoch: int) -> None:
    """An epoch (0-based) is about to start; the student is in train mode.

    Fires: every epoch. Pruning schedules act here. Notification.
    """


# --------------------------------------------------------------------------------------------
# One training step, in order. Keep these cheap: they run for every batch.
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def kdlab_student_forward(stage: Stage, batch: Batch) -> ModelOutput | None:
    """Run the student on ``batch``; in training and in evaluation.

    Fires: every step and every evaluation batch. Wrap it (``wrapper=True``) to change how the
    forward runs (autocast). The default calls ``stage.run_student(batch)`` (the student on
    ``batch.inputs``, through the DistributedDataParallel wrapper in a training step under
    ``--nproc``) and collects the tapped features; a plugin that answers it does the same.

    Returns: a :class:`ModelOutput` (firstresult).
    """


@hookspec(firstresult=True)
def kdlab_teacher_outputs(stage: Stage, batch: Batch) -> list[ModelOutput] | None:
    """Supply the teachers' outputs for ``batch``, one per teacher.

    Fires: every step of a stage with teachers. The default runs each teacher under
    ``torch.no_grad``; a cache plugin can answer first (``batch.index`` identifies samples).

    Returns: a list of :class:`ModelOutput` (firstresult).
    """


@hookspec
def kdlab_loss_terms(
    stage: Stage, batch: Batch, student_out: ModelOutput, teacher_outs: list[ModelOutput]
) -> dict[str, torch.Tensor] | None:
    """Return this method's loss terms as ``{name: scalar tensor}``, unweighted.

    Fires: every step. The core sums all terms of all methods, each multiplied by
    ``stage.config.loss_weights.get(name, 1.0)``; two methods returning the same name is an error.
    A term may also be a :class:`~kdlab.engine.types.DeferredTerm`, which the core evaluates
    with the others of its kind: a vocabulary loss returns
    :class:`kdlab.methods.vocab_chunks.RowsTerm`, so that all of a step's share one pass over
    the LM head.

    Returns: a dict (collected).
    """


@hookspec(firstresult=True)
def kdlab_backward(stage: Stage, loss: torch.Tensor) -> bool | None:
    """Back-propagate the total loss.

    Fires: every step. The default calls ``loss.backward()``.

    Returns: True once done (firstresult); AMP answers first to scale the loss.
    """


@hookspec
def kdlab_before_optimizer_step(stage: Stage) -> None:
    """Gradients are ready; the optimizer has not stepped (gradient clipping, unscaling).

    Fires: every step. Notification.
    """


@hookspec(firstresult=True)
def kdlab_optimizer_step(stage: Stage) -> bool | None:
    """Step ``stage.optimizer``.

    Fires: every step. The default calls ``optimizer.step()``.

    Returns: True once done (firstresult); AMP answers first to step through its GradScaler.
    """


@hookspec
def kdlab_after_optimizer_step(stage: Stage) -> None:
    """The weights have been updated (re-apply masks, EMA teachers).

    Fires: every step, after ``kdlab_optimizer_step``. Notification.
    """


@hookspec
def kdlab_step_end(stage: Stage, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
    """A step finished; ``loss`` and ``terms`` are detached (unweighted terms).

    Fires: every step, after ``stage.step`` was incremented. Calling ``.item()`` here forces a
    device sync: do it only every N steps. Notification.
    """


# --------------------------------------------------------------------------------------------
# Evaluation and epoch end.
# --------------------------------------------------------------------------------------------


@hookspec
def kdlab_eval_start(stage: Stage, split: str) -> None:
    """An evaluation of ``split`` (``"val"`` or ``"test"``) begins: reset what a metric
    accumulates over it.

    Fires: before the split's first batch, after each evaluated epoch (val) and at stage end
    (val, then test). Notification.
    """


@hookspec
def kdlab_eval_batch(
    stage: Stage, split: str, batch: Batch, output: ModelOutput, teacher_outputs: list[ModelOutput]
) -> None:
    """One batch of the split: accumulate what the metric needs (sums and counts, per-sample
    scalars), and keep nothing of the size of ``output``: the core drops the batch afterwards,
    so the memory of an evaluation does not grow with the split.

    Fires: per evaluation batch, under ``torch.no_grad()``, the models in eval mode. ``output``
    is the student's output (logits, tapped features, lengths), ``batch.targets`` the targets;
    ``teacher_outputs`` one output per teacher, only computed if some implementation takes
    ``teacher_outputs`` (empty otherwise, and without teachers). In distributed training every
    process evaluates the whole split. Notification.
    """


@hookspec
def kdlab_eval_metrics(
    stage: Stage, split: str, output: ModelOutput | None, targets: torch.Tensor | None,
    teacher_outputs: list[ModelOutput],
) -> dict[str, float] | None:
    """Return the metrics of the split from what ``kdlab_eval_batch`` accumulated.

    Fires: after the split's last batch. Implement it as ``kdlab_eval_metrics(self, stage,
    split)``. Deprecated: an implementation that names ``output``, ``targets`` or
    ``teacher_outputs`` gets the whole split's outputs concatenated (the only case where the
    core holds a split in memory) and a ``PluginDeprecationWarning``; they are None otherwise.

    Returns: ``{metric: number}`` (collected and merged; the core prefixes ``<split>/``).
    """


@hookspec
def kdlab_epoch_end(stage: Stage, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch finished; ``stage.epoch`` now counts it as done.

    Fires: every epoch, after the scheduler step and evaluation. ``metrics`` are the epoch's val
    metrics (empty on epochs without evaluation). Checkpoints are written here. Notification.
    """


@hookspec
def kdlab_interrupted(stage: Stage) -> None:
    """The run was stopped (Ctrl-C, SIGTERM) while the stage trained; save what must survive.

    Fires: once, before the interrupt ends the run. The models are mid-epoch; ``stage.epoch``
    counts the finished epochs (``checkpoint`` writes the state it kept from the last one).
    Notification.
    """


@hookspec
def kdlab_stage_end(stage: Stage, metrics: dict[str, float]) -> None:
    """Training is over; the model is about to be exported.

    Fires: once per stage, after the final evaluation; ``metrics`` holds the final val/test
    metrics. Make re-parametrisations permanent (pruning) here. A plugin may add entries to
    ``metrics`` (``fp16_export`` adds the metrics re-measured in float16). Notification.
    """


@hookspec
def kdlab_stage_summary(stage: Stage, metrics: dict[str, float]) -> None:
    """The stage is complete and its model exported.

    Fires: once per stage, last. ``metrics`` is final: evaluation plus ``params``,
    ``nonzero_params``, ``macs``, ``bytes`` and ``latency_ms``. Log hparams, close writers here. Notification.
    """


# The order in which the hooks fire in a run (discovery, then one stage: see kdlab.engine.loop);
# ``kdlab validate`` lists each stage's hooks in this order.
FIRING_ORDER = (
    "kdlab_config_class", "kdlab_register_datasets", "kdlab_register_models",
    "kdlab_load_teachers", "kdlab_stage_start", "kdlab_extra_modules", "kdlab_configure_optimizer",
    "kdlab_configure_scheduler", "kdlab_resume_state", "kdlab_load_state_dict",
    "kdlab_epoch_start", "kdlab_student_forward", "kdlab_teacher_outputs", "kdlab_loss_terms",
    "kdlab_backward", "kdlab_before_optimizer_step", "kdlab_optimizer_step", "kdlab_after_optimizer_step",
    "kdlab_step_end", "kdlab_eval_start", "kdlab_eval_batch", "kdlab_eval_metrics", "kdlab_epoch_end", "kdlab_state_dict", "kdlab_interrupted",
    "kdlab_stage_end", "kdlab_stage_summary",
)
