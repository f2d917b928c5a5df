"""The objects that hooks receive: batches, model outputs, data, and the running stage."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import attrs
import pluggy
import torch
from torch import nn

from kdlab.engine import collective
from kdlab.engine.errors import KdlabError
from kdlab.engine.heads import HiddenStates


@attrs.frozen
class Batch:
    """One batch: ``inputs`` (a tensor), ``targets``, and ``index`` (dataset positions).
    ``index`` (and ``view``) stay on the CPU when the batch moves to the device.

    Sequence tasks put what else their models need in ``extra`` (e.g. ``input_lengths``, a raw
    ``wave`` for a teacher that reads audio while the student reads features); variable-length
    ``targets`` are padded with -1.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor
    extra: dict[str, torch.Tensor] = attrs.field(factory=dict)
    # which of a sample's fixed augmentation draws this is (a loader's ``fix_views``, for the
    # augmentation-aware teacher cache); None when the inputs are not one of fixed views
    view: torch.Tensor | None = None
    # under --nproc, every rank's number of samples in this global batch (a sharded loader knows
    # them: kdlab.data.loader.BatchLoader.shares), so no collective is needed to learn them
    shards: tuple[int, ...] | None = None

    def to(self, device: torch.device) -> Batch:
        if self.inputs.device == device:
            return self
        nb = device.type == "cuda"
        return Batch(self.inputs.to(device, non_blocking=nb), self.targets.to(device, non_blocking=nb), self.index,
                     {k: t.to(device, non_blocking=nb) for k, t in self.extra.items()}, self.view, self.shards)


def cat_padded(tensors: list[torch.Tensor], value: float = 0) -> torch.Tensor:
    """Concatenate along dim 0, padding dim 1 (time) to the longest with ``value`` when batches
    differ in length (sequence outputs and targets)."""
    if tensors[0].ndim < 2 or all(t.shape[1] == tensors[0].shape[1] for t in tensors):
        return torch.cat(tensors)
    longest = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, longest - t.shape[1]), value=value)
                      for t in tensors])


@attrs.frozen
class TopK:
    """A sparse target: the ``k`` largest log-probabilities of a distribution over
    ``num_classes`` per position (``values``, ``index``: (..., k)), as a teacher cache with
    ``topk`` stores them. The rest of the mass, ``1 - sum(exp(values))``, is the tail."""

    values: torch.Tensor
    index: torch.Tensor
    num_classes: int

    # the least mass a tail bucket holds (its log stays finite when the k hold everything)
    TAIL_FLOOR = 1e-30

    def tail(self) -> torch.Tensor:
        """log of the mass outside the top k, (...,) (at least ``TAIL_FLOOR``)."""
        return torch.log((-torch.expm1(torch.logsumexp(self.values.float(), -1))).clamp(min=self.TAIL_FLOOR))

    def dense(self) -> torch.Tensor:
        """Full log-probabilities (..., num_classes), the tail spread evenly over the other
        classes: for methods that need a dense vector (small class counts); token methods use
        the k tokens and the tail bucket instead (kdlab.methods.token_kd)."""
        values = self.values.float()
        k = values.shape[-1]
        rest = self.tail()[..., None] - math.log(max(1, self.num_classes - k))
        full = rest.expand(*values.shape[:-1], self.num_classes).clone()
        return full.scatter_(-1, self.index.long(), values)


@attrs.frozen
class ModelOutput:
    """What a forward produced: ``logits`` and the tapped ``features`` by alias. Sequence models
    give per-frame logits (batch, frames, classes) and the valid ``lengths`` (batch,).

    A teacher read from a top-k cache gives ``topk`` (:class:`TopK`) instead of logits; reading
    ``logits`` then expands it (:meth:`TopK.dense`), once. A language model that splits its head
    gives ``hidden`` (:class:`HiddenStates`; pass them as ``logits``); reading ``logits`` then
    applies the head, once. Methods that can, use ``topk`` or ``hidden`` directly and never
    build the (positions x vocabulary) tensor."""

    _logits: torch.Tensor | None = attrs.field(alias="logits")
    features: dict[str, torch.Tensor] = attrs.field(factory=dict)
    lengths: torch.Tensor | None = None
    topk: TopK | None = None
    hidden: HiddenStates | None = None

    def __attrs_post_init__(self):
        if isinstance(self._logits, HiddenStates):
            object.__setattr__(self, "hidden", self._logits)
            object.__setattr__(self, "_logits", None)

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None and self.topk is not None:
            object.__setattr__(self, "_logits", self.topk.dense())  # expanded once, when asked for
        elif self._logits is None and self.hidden is not None:
            object.__setattr__(self, "_logits", self.hidden.logits())  # the head applied once, when asked for
        return self._logits

    @property
    def logits_shape(self) -> tuple[int, ...]:
        """The shape of ``logits``, without building them from ``topk`` or ``hidden``."""
        if self._logits is not None:
            return tuple(self._logits.shape)
        if self.hidden is not None:
            return (*self.hidden.hidden.shape[:-1], self.hidden.weight.shape[0])
        if self.topk is not None:
            return (*self.topk.values.shape[:-1], self.topk.num_classes)
        return ()

    @staticmethod
    def cat(outputs: list[ModelOutput]) -> ModelOutput:
        first = outputs[0]
        return ModelOutput(
            cat_padded([o.logits for o in outputs]),
            {k: cat_padded([o.features[k] for o in outputs]) for k in first.features},
            torch.cat([o.lengths for o in outputs]) if first.lengths is not None else None,
        )


@attrs.frozen
class Accumulation:
    """Where a micro-batch stands in its optimizer step under gradient accumulation: ``share``,
    its share of the step's samples (its loss is weighted by it), and the valid targets
    (``targets >= 0``) of this micro-batch and of the whole step, over all processes."""

    share: float
    valid: float
    valid_total: float


class DeferredTerm:
    """A loss term that a method returns instead of a scalar tensor when the core can compute
    it more cheaply together with others of its kind (:class:`kdlab.methods.vocab_chunks.RowsTerm`:
    every vocabulary loss of a step in one pass over the LM head). The core groups the deferred
    terms of a step by ``(type(term), term.group_key())`` and calls the type's
    :meth:`evaluate` once per group with the terms' weights; the term's value in the history
    and the logs is what ``evaluate`` reports for it."""

    def group_key(self) -> object:
        """Terms of one type with equal keys are evaluated in one call."""
        return id(self)

    @classmethod
    def evaluate(cls, terms: list[DeferredTerm], weights: list[float]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (sum of weight * term, differentiable; each term's value, detached)."""
        raise NotImplementedError


class Loader(Protocol):
    """What a data set supplies per split: iterable over :class:`Batch`, sized, and re-seedable
    per epoch (like ``DistributedSampler.set_epoch``) so that shuffling is a function of
    (seed, epoch) and a resumed run sees the same order. ``shard(rank, world_size)`` makes the
    training loader yield this rank's part of each global batch (distributed training).
    Optional: ``to(device)`` (the runner moves an in-memory data set to the training device
    once), ``fix_views(k)`` and ``view_batches(batch_size)`` (fixed augmentation draws, for the
    augmentation-aware teacher cache). :mod:`kdlab.data.loader` has a base class and two ready
    loaders."""

    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def shard(self, rank: int, world_size: int) -> None: ...


@attrs.frozen(kw_only=True)
class StageView:
    """What a plugin sees of its stage when it is built (``__init__(self, config, stage)``) and
    in its ``requires(config, stage)``: the recipe's settings, before anything is built
    (``kdlab validate`` and ``kdlab run`` check every stage before the first trains)."""

    name: str
    epochs: int
    teachers: tuple[str, ...]  # as the recipe lists them: earlier stage names or model files
    methods: tuple[str, ...]  # the stage's enabled methods
    student_taps: tuple[str, ...]  # aliases of [stages.<s>.taps.student]
    teacher_taps: tuple[tuple[str, ...], ...]  # per teacher, the aliases its taps define
    data: Any  # the data set's structured [data] table
    augmented: bool | None  # the training inputs differ between epochs (None: the data set does not say)
    data_kinds: frozenset[str] | None = None  # the data set's kinds, e.g. {"image", "classification"}


def data_kinds(config: Any) -> frozenset[str] | None:
    """The kinds a data set's structured ``[data]`` table declares in its class attribute
    ``kinds`` (e.g. ``{"image", "classification"}``); None when it does not say."""
    kinds = getattr(type(config), "kinds", None)
    return None if kinds is None else frozenset(kinds)


def _aliases(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen(kw_only=True)
class Requirements:
    """What a method needs of its stage, returned by its ``requires(config, stage)`` (a
    staticmethod or classmethod of the plugin; ``config`` is its validated table, ``stage`` a
    :class:`StageView`). Each unmet need is an error naming the recipe file, line and key.

    ``teachers``: at least this many. ``terms``: the loss terms the method returns with this
    config (empty for one that adds none, None if it cannot say): with every method of a stage
    declaring them, a stage with no term, two methods returning the same term, and
    ``loss_weights`` naming none are found before training. ``student_taps``: tap aliases it
    reads from the student; ``teacher_taps``: ``(teacher index, aliases)`` it reads, index None
    for every teacher. ``problems``: ``(key in its table, message)`` for settings that do not fit
    this stage (a start epoch past the epochs). ``tap_keys``: the keys of its table that name
    the student's and the teacher's taps, for the error's key path."""

    teachers: int = 0
    terms: frozenset[str] | None = attrs.field(default=None, converter=lambda t: None if t is None else frozenset(t))
    student_taps: tuple[str, ...] = attrs.field(default=(), converter=_aliases)
    teacher_taps: tuple[tuple[int | None, tuple[str, ...]], ...] = ()
    problems: tuple[tuple[str, str], ...] = ()
    tap_keys: tuple[str, str] = ("student", "teacher")  # the keys of its table that name the taps


@attrs.frozen(kw_only=True)
class DataBundle:
    train: Loader
    val: Loader | None
    test: Loader | None
    num_classes: int
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    augmented: bool = False  # training inputs are randomly transformed (differ between epochs)
    key: dict = attrs.field(factory=dict)  # what identifies the data and its transforms (for caches)
    classes: tuple[str, ...] = ()  # class names, when the data has them (CTC: blank, then the phonemes)
    # what a data set hands its metric and method plugins beyond batches, by name (the text data
    # set: its tokeniser and each dialogue's prompt length, reference response and fact)
    extra: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class DataSpec:
    """``[data]``: the data-set name and its structured settings."""

    name: str
    config: Any


@attrs.frozen(kw_only=True)
class ModelSpec:
    """``[stages.<s>.model]``: the architecture name and its structured settings."""

    arch: str
    config: Any


class Taps:
    """Forward hooks on named submodules that keep their latest outputs, so plugins can read
    intermediate features without editing model code."""

    def __init__(self, model: nn.Module, paths: dict[str, str], where: str):
        self.captured: dict[str, torch.Tensor] = {}
        self.modules: dict[str, nn.Module] = {}  # alias -> the tapped module (its weights, e.g. a BatchNorm's)
        self._handles = []
        modules = dict(model.named_modules())
        for alias, path in paths.items():
            if path not in modules:
                near = [n for n in modules if n and (path.split(".")[0] in n)][:8] or [n for n in modules if n][:8]
                raise KdlabError(
                    f"{where}.{alias}: no module '{path}' in the model; some that exist: {', '.join(near)}"
                )
            self.modules[alias] = modules[path]
            self._handles.append(modules[path].register_forward_hook(self._keeper(alias)))

    def _keeper(self, alias: str):
        def hook(_module, _inputs, output):
            self.captured[alias] = output

        return hook

    def collect(self) -> dict[str, torch.Tensor]:
        out, self.captured = self.captured, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@attrs.define(kw_only=True, eq=False)
class Stage:
    """The running stage, passed to every stage hook. The core owns the fields; plugins read them
    (and step the optimizer through the hooks meant for it)."""

    name: str
    index: int
    config: Any  # StageConfig
    recipe: Any  # Recipe
    run_dir: Path
    device: torch.device
    data: DataBundle
    pm: pluggy.PluginManager
    catalogue: Any  # Catalogue: installed plugins, data sets and model architectures
    method_configs: dict[str, Any]
    student: nn.Module | None = None
    teachers: list[nn.Module] = attrs.field(factory=list)
    student_taps: Taps | None = None
    teacher_taps: list[Taps] = attrs.field(factory=list)
    extra: nn.ModuleDict = attrs.field(factory=nn.ModuleDict)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # training input positions seen (all processes; for text, tokens), for max_tokens
    batch: Batch | None = None  # the training batch of the current step (this rank's share of it)
    # the step's batches: (batch,), or its micro-batches under gradient accumulation
    micro_batches: tuple[Batch, ...] = ()
    step_samples: int = 0  # the step's samples so far, all micro-batches and processes
    _configs: dict = attrs.field(factory=dict, init=False, repr=False)  # plugin id -> its table (deprecated path)
    phase: str = "setup"  # what the loop is doing: "setup", "train", "val" or "test"
    rank: int = 0  # this process's rank in distributed training (0 alone writes files)
    world_size: int = 1
    # every rank's number of samples in the current training step (distributed training only)
    shard_sizes: list[int] | None = None
    # under gradient accumulation (stages.<s>.accumulate > 1), the current micro-batch's place in
    # its optimizer step (see Accumulation); None otherwise
    accumulation: Accumulation | None = None
    # the student in DistributedDataParallel, a callable of a batch (set by the distributed
    # plugin under --nproc, see run_student): it averages the gradients during the backward pass
    data_parallel: Any = None

    @property
    def hook(self):
        return self.pm.hook

    @property
    def training_over(self) -> bool:
        """True once the stage has trained all it will: its epochs, or its step or token budget
        (``max_steps``, ``max_tokens``) if that came first. The evaluations after training see True."""
        return self.epoch >= self.config.epochs or self.budget_spent

    @property
    def budget_spent(self) -> bool:
        """The step budget (``max_steps``) or the token budget (``max_tokens``) is used up."""
        cfg = self.config
        return ((cfg.max_steps is not None and self.step >= cfg.max_steps)
                or (cfg.max_tokens is not None and self.tokens >= cfg.max_tokens))

    @property
    def step_budget(self) -> int | None:
        """The steps the budgets allow (None: the epochs decide): ``max_steps``, or the steps of
        full batches that ``max_tokens`` takes, whichever is fewer (for the schedule's length)."""
        cfg, steps = self.config, [self.config.max_steps]
        if cfg.max_tokens is not None:
            per_sample = math.prod(self.data.input_shape) if self.data.input_shape else 1
            per_step = getattr(self.data.train, "batch_size", 1) * cfg.accumulate * per_sample
            steps.append(-(-cfg.max_tokens // max(per_step, 1)))
        steps = [s for s in steps if s is not None]
        return min(steps) if steps else None

    @property
    def is_main(self) -> bool:
        """True in the one process that writes files (rank 0; the only process without
        ``--nproc``). Every rank may read them."""
        return self.rank == 0

    def config_for(self, plugin: object) -> Any:
        """Deprecated, removed in the next release: a plugin receives its structured table in its
        constructor, ``__init__(self, config)``. Kept for plugins written for the previous
        release, which are warned when they are built (``PluginDeprecationWarning``)."""
        key = id(plugin)
        if key not in self._configs:
            self._configs[key] = self.method_configs[self.pm.get_name(plugin)]
        return self._configs[key]

    def resolve_model_ref(self, ref: str) -> Path:
        """A stage name -> that stage's exported model in this run; otherwise a file path."""
        if ref in self.recipe.stages:
            return self.run_dir / "models" / f"{ref}.pt"
        return Path(ref)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of a training batch's samples -> the whole global batch's, with the
        gradient flowing back to this rank's share: for losses computed across the samples of
        a batch (contrastive, class centres, triplet mining), so that ``--nproc N`` computes
        what one process computes. The identity in one process."""
        return collective.gather(x, self.shard_sizes, self.rank)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in a training epoch: the loader's batches over ``accumulate``."""
        return -(-len(self.data.train) // self.config.accumulate)

    def mean_divisor(self, weights: torch.Tensor) -> torch.Tensor:
        """What a sum over this rank's positions (tokens, frames), weighted by ``weights`` (a
        mask or weights, first dimension = samples), is divided by to give the weighted mean over
        the *global* batch: the distributed plugin weights each rank's gradient by its share of
        the samples, while such a mean weighs every position alike, and shares hold different
        numbers of positions. In one process: the sum of the weights (at least 1e-8). Otherwise:
        the global batch's sum of weights (one all-gather) times this rank's share of its samples.

        Under gradient accumulation the loop weights each micro-batch's loss by its share of the
        step's samples, as ranks are weighted; the divisor is then the weight sum over the whole
        accumulated batch times that share, so the step's gradient is that of one mean over all
        its positions (not a mean of the micro-batches' means, which over-weights the tokens of
        short micro-batches). The accumulated batch's weight sum is exact for the valid-target
        mask (``targets >= 0``, what the token losses use: counted for every micro-batch before
        the step); for other weights it is this micro-batch's sum scaled by its share of the
        step's valid targets."""
        if self.world_size == 1 or self.shard_sizes is None:
            total, share = weights.sum(), 1.0
        else:
            per_sample = self.gather(weights.flatten(1).sum(1).float())
            total, share = per_sample.sum(), len(weights) / len(per_sample)
        acc = self.accumulation
        if acc is not None:
            scale = acc.valid_total / acc.valid if acc.valid > 0 else 1.0
            total, share = total * scale, share * acc.share
        return total.clamp(min=1e-8) * share

    def run_student(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student on ``batch`` -> (logits, lengths or None), see :func:`run_model`. In a
        training step under ``--nproc`` the call goes through the DistributedDataParallel wrapper,
        so that the backward pass averages the gradients. A plugin that answers
        ``kdlab_student_forward`` itself calls this rather than ``stage.student``; one that calls
        the student directly still trains correctly, with the gradients averaged after the
        backward pass instead of during it."""
        if self.data_parallel is not None and self.phase == "train" and 0 not in self.shard_sizes:
            return self.data_parallel(batch)
        return run_model(self.student, batch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return params + [p for p in self.extra.parameters() if p.requires_grad]

    # -- checkpoint state -------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue this stage exactly where it is now."""
        plugins = {}
        for impl in self.hook.kdlab_state_dict.get_hookimpls():
            state = _call(impl, stage=self)
            if state is not None:
                plugins[impl.plugin_name] = state
        return {
            "epoch": self.epoch,
            "step": self.step,
            "tokens": self.tokens,
            "student": self.student.state_dict(),
            "extra": self.extra.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "plugins": plugins,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = state["epoch"], state["step"]
        self.tokens = int(state.get("tokens", 0))  # absent from checkpoints before max_tokens
        self.student.load_state_dict(state["student"])
        self.extra.load_state_dict(state["extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        # RNG states are CPU byte tensors, whatever map_location moved the checkpoint to
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        for impl in self.hook.kdlab_load_state_dict.get_hookimpls():
            if impl.plugin_name in state["plugins"]:
                _call(impl, stage=self, state=state["plugins"][impl.plugin_name])


def run_model(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model on a batch -> (logits, lengths or None). A model is called on ``batch.inputs``,
    unless it defines ``forward_batch(batch) -> (logits, lengths)``: sequence models read what
    they need from the batch that way (a wav2vec2 teacher the raw audio in
    ``batch.extra["wave"]``, a Conformer student the features and their lengths)."""
    if hasattr(model, "forward_batch"):
        return model.forward_batch(batch)
    if getattr(model, "splits_head", False):  # a language model: HiddenStates, see ModelOutput
        return model(batch.inputs, head=False), None
    return model(batch.inputs), None


def _call(impl, **kwargs):
    """Call one plugin's hookimpl the way pluggy would: positionally, with the arguments it
    asks for. Used where the core must know which plugin a result came from."""
    return impl.function(*[kwargs[name] for name in impl.argnames])
