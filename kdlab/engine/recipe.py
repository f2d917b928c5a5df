"""Recipes: TOML -> one cattrs converter (extra keys forbidden) -> frozen attrs classes.

A recipe is data. Nothing in it is executed or imported: plugins are chosen by their
entry-point names, models and data sets by the names their plugins declare. Every problem is
collected and reported together, each with the file, the line where it can be found, and the
key path (``recipes/x.toml:12: temperature must be > 0, got -1 @ $.stages.kd.methods.logit_kd``).

Layout of a recipe::

    name = "digits_kd"          # optional, defaults to the file name
    seed = 0
    [data]                      # shared by all stages; `dataset` selects the data-set table
    [plugins.<name>]            # settings of default-on plugins (tensorboard, checkpoint, ...)
    [defaults]                  # any stage key; merged under every stage (the stage wins)
    [stages.<stage>]            # stages run in file order
    [stages.<stage>.model]      # `arch` selects the model table
    [stages.<stage>.methods.<method>]   # enables a method plugin for the stage
    [sweep]                     # for `kdlab sweep` only (kdlab/studies/sweep.py)
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from attrs import Factory, field
from attrs import validators as v
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from kdlab.engine import limits
from kdlab.engine.errors import KdlabError, RecipeError
from kdlab.engine.registry import Catalogue
from kdlab.engine.types import DataSpec, ModelSpec, data_kinds

# ---------------------------------------------------------------------------------------------
# The core's own tables. Method and infrastructure plugins contribute the rest.
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = field(default=1e-3, validator=v.gt(0))
    momentum: float = field(default=0.9, validator=[v.ge(0), v.lt(1)])
    weight_decay: float = field(default=0.0, validator=v.ge(0))
    nesterov: bool = False


@attrs.frozen(kw_only=True)
class SchedulerConfig:
    """Learning-rate schedule, stepped once per epoch, or after every optimizer step with
    ``interval = "step"`` (cosine then decays smoothly over all the stage's steps, and
    ``warmup_steps`` adds a warm-up counted in steps; milestones stay in epochs)."""

    name: Literal["constant", "cosine", "multistep"] = "constant"
    # multistep: epochs at which lr is multiplied by gamma
    milestones: tuple[int, ...] = field(default=(), validator=v.deep_iterable(v.ge(1)))
    gamma: float = field(default=0.1, validator=v.gt(0))
    warmup_epochs: int = field(default=0, validator=v.ge(0))
    interval: Literal["epoch", "step"] = "epoch"
    warmup_steps: int = field(default=0, validator=v.ge(0))

    def __attrs_post_init__(self):
        if self.warmup_steps and self.interval != "step":
            raise ValueError("warmup_steps counts optimizer steps: set interval = \"step\" too")


@attrs.frozen(kw_only=True)
class TapsConfig:
    """Feature taps: ``{alias: dotted module path}``. ``teacher`` applies to every teacher;
    ``teachers.<reference>`` replaces it for one teacher (teachers of different architectures)."""

    student: dict[str, str] = Factory(dict)
    teacher: dict[str, str] = Factory(dict)
    teachers: dict[str, dict[str, str]] = Factory(dict)

    def for_teacher(self, ref: str) -> dict[str, str]:
        return self.teachers.get(ref, self.teacher)


def _weights_non_negative(_inst, _attr, value):
    bad = {k: w for k, w in value.items() if w < 0}
    if bad:
        raise ValueError(f"weights must be >= 0, got {bad}")


@attrs.frozen(kw_only=True)
class StageConfig:
    # 0: no training; the stage evaluates and exports its starting model (``init``, or a model that
    # arrives trained, such as a Hugging Face teacher), e.g. to reuse a teacher from another run
    epochs: int = field(validator=v.ge(0))
    model: ModelSpec
    # a budget of optimizer steps besides the epochs: the stage stops at whichever comes first
    # (mid-epoch: that epoch is then evaluated and checkpointed as usual); a per-step cosine
    # schedule decays over the budget
    max_steps: int | None = field(default=None, validator=v.optional(v.ge(1)))
    # a budget of training tokens (the inputs' positions, all processes: for text, sequences x
    # seq_len): the stage stops after the step that reaches it; a per-step schedule decays over
    # the steps it takes at full batches
    max_tokens: int | None = field(default=None, validator=v.optional(v.ge(1)))
    # micro-batches per optimizer step (gradient accumulation): a step's gradient is that of the
    # whole accumulated batch, token losses averaged over its tokens (Stage.mean_divisor)
    accumulate: int = field(default=1, validator=v.ge(1))
    teachers: tuple[str, ...] = ()  # earlier stage names or exported model files
    init: str | None = None  # start the student from an earlier stage's (or a file's) weights
    optimizer: OptimizerConfig = Factory(OptimizerConfig)
    scheduler: SchedulerConfig = Factory(SchedulerConfig)
    methods: dict[str, Any] = Factory(dict)  # method name -> its structured table (or None)
    loss_weights: dict[str, float] = field(factory=dict, validator=_weights_non_negative)
    taps: TapsConfig = Factory(TapsConfig)
    eval_every: int = field(default=1, validator=v.ge(1))
    # also evaluate the test split at each evaluation (history gets test/* per epoch, for the
    # papers' "best epoch" figures); never used to pick a checkpoint unless `monitor` names it
    eval_test: bool = False
    # metric that decides the best checkpoint; unset: val/accuracy where a plugin reports it
    monitor: str | None = None
    monitor_mode: Literal["max", "min"] = "max"


@attrs.frozen(kw_only=True)
class Recipe:
    name: str
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn only)
    data: DataSpec
    stages: dict[str, StageConfig]
    plugins: dict[str, Any]  # default-on plugin name -> its structured table (or None)
    disabled: tuple[str, ...] = ()  # default-on plugins switched off


# ---------------------------------------------------------------------------------------------
# The converter.
# ---------------------------------------------------------------------------------------------


def _strict(kind: type):
    """TOML already has types: refuse the silent coercions cattrs would do (bool("false"))."""

    def structure(value, _type):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"must be {_type_name(kind)}, got {value!r}")
        if kind is float and not math.isfinite(value):  # TOML has inf and nan; no setting wants them
            raise TypeError(f"must be a finite number, got {value!r}")
        if kind is int and not -(2**63) <= value < 2**63:  # what torch and numpy can hold
            raise TypeError(f"must be a 64-bit integer, got {value}")
        return value

    return structure


ALIASES = str | tuple[str, ...]  # the type of a method's tap-alias setting that takes one or several


def _is_sequence(t) -> bool:
    return typing.get_origin(t) in (tuple, list)


def make_converter() -> cattrs.Converter:
    def plain():
        conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
        for kind in (int, float, bool, str):
            conv.register_structure_hook(kind, _strict(kind))
        return conv

    conv, base = plain(), plain()

    def sequence(value, type_):
        # cattrs would take a string as a sequence of letters: teachers = "teacher" is one mistake
        if isinstance(value, (str, bytes, dict)):
            raise TypeError(f"must be a list, got {value!r}")
        return base.structure(value, type_)

    conv.register_structure_hook_func(_is_sequence, sequence)

    def aliases(value, _type):
        # a method over one tap pair or several: a tap alias, or a list of them
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise TypeError(f"must be a tap alias or a list of them, got {value!r}")
        return conv.structure(value, tuple[str, ...])

    conv.register_structure_hook(ALIASES, aliases)
    return conv


CONVERTER = make_converter()


def _type_name(t) -> str:
    if typing.get_origin(t) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        t, getattr(t, "__name__", str(t))
    )


# ---------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------

class Problems:
    """Collects (key path, message) pairs; turns them into one RecipeError at the end."""

    def __init__(self, file: str, text: str | None, overridden: dict[tuple, str], table: str = "sweep"):
        # overridden: key path -> where the value came from ("--set", or a [sweep]/[search] key's line)
        self.file, self.text, self.overridden, self.table = file, text, overridden, table
        self.items: list[tuple[tuple, str]] = []

    def add(self, path: tuple, message: str) -> None:
        self.items.append((tuple(path), message))

    def structure(self, raw: Any, cls: type, path: tuple) -> Any:
        """Structure ``raw`` into ``cls``, recording every problem under ``path``; None on error."""
        if not isinstance(raw, dict):
            self.add(path, f"must be a table, got {raw!r}")
            return None
        try:
            with attrs.validators.disabled():  # validators run below, to report all at once
                obj = CONVERTER.structure(raw, cls)
        except Exception as exc:  # noqa: BLE001 - every structuring problem becomes a message
            self._walk(exc, path, cls)
            return None
        before = len(self.items)
        self._validate(obj, path)
        return obj if len(self.items) == before else None

    # Written out rather than cattrs.transform_error: that walks the same exception groups but
    # hands back "message @ $.a.b" strings (the line lookup needs the key path as a tuple) and
    # reports forbidden keys once per table (here each unknown key gets its own line and message).
    def _walk(self, exc: BaseException, path: tuple, cls: Any) -> None:
        if isinstance(exc, ClassValidationError):
            with_notes, without = exc.group_exceptions()
            for sub, note in with_notes:
                self._walk_field(sub, path + (note.name,), note.type)
            for sub in without:
                self._walk(sub, path, cls)
        elif isinstance(exc, IterableValidationError):
            with_notes, without = exc.group_exceptions()
            for sub, note in with_notes:
                self._walk_field(sub, path + (note.index,), note.type)
            for sub in without:
                self._walk(sub, path, cls)
        elif isinstance(exc, ForbiddenExtraKeysError):
            allowed = ", ".join(sorted([a.name for a in attrs.fields(exc.cl)] + _HAND_STRUCTURED.get(exc.cl, [])))
            for key in sorted(exc.extra_fields):
                self.add(path + (key,), f"unknown key '{key}' (allowed: {allowed})")
        else:
            self.add(path, str(exc))

    def _walk_field(self, exc: BaseException, path: tuple, type_: Any) -> None:
        if isinstance(exc, (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError)):
            self._walk(exc, path, type_)
        elif isinstance(exc, KeyError):
            self.add(path, f"{path[-1]} is required")
        elif typing.get_origin(type_) is Literal:
            self.add(path, f"{path[-1]} must be {_type_name(type_)}")
        elif isinstance(exc, TypeError) and str(exc).startswith("must be"):
            self.add(path, f"{path[-1]} {exc}")
        else:
            self.add(path, f"{path[-1]} must be {_type_name(type_)}")

    def _validate(self, obj: Any, path: tuple) -> None:
        """Run the attrs validators of ``obj`` and of everything nested in it."""
        if attrs.has(type(obj)):
            for a in attrs.fields(type(obj)):
                value = getattr(obj, a.name)
                if a.validator is not None:
                    try:
                        a.validator(obj, a, value)
                    except (ValueError, TypeError) as exc:
                        self.add(path + (a.name,), _validator_message(a.name, exc))
                self._validate(value, path + (a.name,))
        elif isinstance(obj, dict):
            for k, item in obj.items():
                self._validate(item, path + (k,))
        elif isinstance(obj, (DataSpec, ModelSpec)):
            self._validate(obj.config, path)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = []
        for path, message in self.items:
            source = next((src for o, src in self.overridden.items() if _covers(o, path)), None)
            if source is None:
                line = _find_line(self.text, path)
                where, origin = (f"{self.file}:{line}" if line else self.file), ""
            elif source == "--set":
                where, origin = self.file, " (from --set)"
            else:  # a [sweep] value: its line in the sweep table
                where, origin = source, f" (from [{self.table}])"
            lines.append(f"{where}: {message} @ {format_path(path)}{origin}")
        raise RecipeError(lines)


def structure_stored(raw: Any, cls: type, file: str | Path) -> Any:
    """``raw``, a config stored in a model file, structured into ``cls``; a mismatch (a key this
    version does not know, a wrong type) is one KdlabError line naming the file and the keys."""
    problems = Problems(str(file), None, {})
    obj = problems.structure(raw, cls, ("config",))
    if problems.items:
        what = "; ".join(f"{message} @ {format_path(path)}" for path, message in problems.items)
        raise KdlabError(f"{file}: its stored model settings do not fit this installation's {cls.__name__}: {what} "
                         "(written by another version of kdlab or of the model's plugin, or damaged)")
    return obj


def _covers(override: tuple, path: tuple) -> bool:
    """Whether the value at ``path`` came from the override of key ``override`` (a
    ``defaults.X`` override reaches every stage's ``X``)."""
    if path[: len(override)] == override:
        return True
    return override[:1] == ("defaults",) and path[:1] == ("stages",) and path[2 : 1 + len(override)] == override[1:]


def sweep_line(text: str, key: str, table: str = "sweep") -> int | None:
    """The line of ``key`` (``"defaults.optimizer.lr" = [...]``) in a [sweep...] (or
    [search...]) table."""
    in_sweep = False
    for number, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if s.startswith("["):
            in_sweep = s.strip("[]").strip().startswith(table)
        elif in_sweep and "=" in s:
            bare = s.split("=", 1)[0].strip()
            # "key" = [...], grid."key" = [...], grid = { "key" = [...] }
            if bare == key or f'"{key}"' in s or f"'{key}'" in s:
                return number
    return None


def _validator_message(name: str, exc: Exception) -> str:
    text = str(exc)
    m = re.match(r"^'[^']+' (must be .+?): (.*)$", text)
    if m:  # attrs' comparison validators: "'lr' must be > 0: -1"
        return f"{name} {m.group(1)}, got {m.group(2)}"
    return f"{name}: " + re.sub(r"^'[^']+' ", "", text)


def format_path(path: tuple) -> str:
    return "$" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)


def _find_line(text: str | None, path: tuple) -> int | None:
    """The line where the deepest existing prefix of ``path`` is written (best effort: tables,
    dotted keys and plain keys; not keys inside inline tables). A stage's key that the stage
    does not write but ``[defaults]`` does points at the line in ``[defaults]``."""
    line, depth = _deepest(text, path)
    if len(path) > 2 and path[0] == "stages" and depth <= 2:
        in_defaults, d = _deepest(text, ("defaults", *path[2:]))
        if d > 1:
            return in_defaults
    return line


def locate(file: str | Path, path: tuple) -> str:
    """``file:line`` of a key path in a recipe file (``file`` alone when the line is unknown)."""
    try:
        line = _find_line(Path(file).read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError):
        line = None
    return f"{file}:{line}" if line else str(file)


def _deepest(text: str | None, path: tuple) -> tuple[int | None, int]:
    if not text or not path:
        return None, 0
    table: tuple = ()
    best, best_len = None, 0
    want = tuple(str(k) for k in path)
    for number, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        if s.startswith("["):
            table = tuple(_key_parts(s.strip("[]")))
            keys = table
        elif "=" in s:
            keys = table + tuple(_key_parts(s.split("=", 1)[0]))
        else:
            continue
        # a line that sets the key itself, a table above it or (dotted keys) a key below it
        n = min(len(keys), len(want))
        if want[:n] == keys[:n] and n > best_len:
            best, best_len = number, n
        elif table == want[: len(table)] and len(table) > best_len:
            best, best_len = number, len(table)
    return best, best_len


def _key_parts(key: str) -> list[str]:
    return [p.strip().strip("\"'") for p in key.split(".")]


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``a.b.c=value`` -> (("a","b","c"), value); the value is read as TOML, else as a string."""
    if "=" not in text:
        raise RecipeError([f"--set {text}: expected KEY.PATH=VALUE"])
    key, raw = text.split("=", 1)
    path = tuple(p for p in key.strip().split("."))
    if not all(path):
        raise RecipeError([f"--set {text}: empty key in '{key}'"])
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except RecursionError as exc:
        raise RecipeError([f"--set {key.strip()}: value nested too deep"]) from exc
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string (--set data.root=/data/cifar)
    return path, value


def set_key(raw: dict, keys: tuple[str, ...], value: Any, item: str) -> tuple[str, ...]:
    """Set ``raw[k1][k2]... = value`` for an override ``item``, making the tables on the way;
    returns the shortest key path the override added to ``raw`` (a misspelt key's own path)."""
    node, created = raw, keys
    for depth, k in enumerate(keys[:-1]):
        if k not in node and created is keys:
            created = keys[: depth + 1]
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError([f"--set {item}: '{k}' is not a table"])
    node[keys[-1]] = value
    return created


def _merge(base: dict, over: dict) -> dict:
    """Deep merge, ``over`` winning. A table whose selector (``arch``) differs is replaced whole:
    a stage's ViT does not inherit the default CNN's channels."""
    out = copy.deepcopy(base)
    for k, val in over.items():
        old = out.get(k)
        if isinstance(old, dict) and isinstance(val, dict) and old.get("arch", val.get("arch")) == val.get("arch", old.get("arch")):
            out[k] = _merge(old, val)
        else:
            out[k] = copy.deepcopy(val)
    return out


# Recipes are a few tables deep; a file nested deeper is a mistake (or an attack on the parser,
# whose recursion would end in a RecursionError traceback).
MAX_TOML_DEPTH = 32


def _depth(value, level: int = 0) -> int:
    if level > MAX_TOML_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(v, level + 1) for v in children), default=level)


def read_toml(path: str | Path) -> tuple[str, dict]:
    """A TOML file's text and table; any problem is a RecipeError naming the file (and the line
    where the parser gives one)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError([f"{path}: cannot read recipe ({exc.strerror})"]) from exc
    except UnicodeDecodeError as exc:
        raise RecipeError([f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's message ends with "(at line L, column C)"; put the line where ours goes
        m = re.match(r"^(.*) \(at line (\d+), column \d+\)$", str(exc))
        message, where = (m.group(1), f"{path}:{m.group(2)}") if m else (str(exc), str(path))
        raise RecipeError([f"{where}: not valid TOML: {message}"]) from exc
    except RecursionError as exc:
        raise RecipeError([f"{path}: not valid TOML: arrays or tables nested too deep"]) from exc
    if _depth(raw) > MAX_TOML_DEPTH:
        raise RecipeError([f"{path}: arrays or tables nested more than {MAX_TOML_DEPTH} deep; a recipe needs a few"])
    return text, raw


def load_recipe(path: str | Path, catalogue: Catalogue, overrides: list[str] = (),
                sweep_overrides: list[str] = (), table: str = "sweep") -> Recipe:
    """Read, override, validate and structure a recipe file. Raises RecipeError listing all
    problems. ``sweep_overrides`` come from the file's [sweep] (or ``table``) table (errors point at its
    lines)."""
    path = Path(path)
    text, raw = read_toml(path)
    return structure_recipe(raw, catalogue, file=str(path), text=text, overrides=[*overrides, *sweep_overrides],
                            default_name=path.stem, sweep_count=len(sweep_overrides), table=table)


def structure_recipe(
    raw: dict,
    catalogue: Catalogue,
    *,
    file: str = "<recipe>",
    text: str | None = None,
    overrides: list[str] = (),
    default_name: str = "recipe",
    sweep_count: int = 0,
    table: str = "sweep",
) -> Recipe:
    """``overrides``: ``KEY.PATH=VALUE`` strings; the last ``sweep_count`` come from [sweep] (or
    ``table``: [search])."""
    raw = copy.deepcopy(raw)
    overridden: dict[tuple, str] = {}
    for number, item in enumerate(overrides):
        keys, value = parse_override(item)
        created = set_key(raw, keys, value, item)
        from_sweep = number >= len(overrides) - sweep_count
        line = sweep_line(text or "", ".".join(keys), table) if from_sweep else None
        # a misspelt key the override made ("optimiser") is reported where the override is written
        overridden[created] = (f"{file}:{line}" if line else file) if from_sweep else "--set"
    problems = Problems(file, text, overridden, table)

    # `sweep` and `search` are read by `kdlab sweep` and `kdlab search` (kdlab.studies); a run ignores them
    known_top = {"name", "seed", "device", "deterministic", "data", "plugins", "defaults", "stages", "sweep", "search"}
    for key in raw:
        if key not in known_top:
            problems.add((key,), f"unknown key '{key}' (allowed: {', '.join(sorted(known_top))})")

    scalars = {k: raw[k] for k in ("name", "seed", "device", "deterministic") if k in raw}
    scalars.setdefault("name", default_name)
    top = problems.structure(scalars, _TopLevel, ()) or _TopLevel(name=default_name)

    data = _structure_named(problems, raw.get("data", {}), "dataset", catalogue.datasets, ("data",), "data set")
    plugins, disabled = _structure_default_plugins(problems, raw.get("plugins", {}), catalogue,
                                                   data_kinds(data.config) if data is not None else None,
                                                   data.name if data is not None else None)

    stages: dict[str, StageConfig] = {}
    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, dict) or not raw_stages:
        problems.add(("stages",), "a recipe needs at least one [stages.<name>] table")
        raw_stages = {}
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.add(("defaults",), "defaults must be a table")
        defaults = {}
    for name, raw_stage in raw_stages.items():
        where = ("stages", name)
        if not isinstance(raw_stage, dict):
            problems.add(where, f"stage '{name}' must be a table")
            continue
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            problems.add(where, f"stage name '{name}' may contain only letters, digits, '_' and '-'")
            continue
        merged = _merge(defaults, raw_stage)
        stage = _structure_stage(problems, merged, catalogue, where)
        if stage is not None:
            _check_refs(problems, name, stage, list(stages), where)
            stages[name] = stage
        else:
            stages[name] = None  # keep the name so later references to it are not also reported
    model = defaults.get("model")
    arch = model.get("arch") if isinstance(model, dict) else None
    inherited = any(not isinstance(s, dict) or not isinstance(s.get("model"), dict) or "arch" not in s["model"]
                    for s in raw_stages.values())
    if isinstance(arch, str) and arch not in catalogue.models and not inherited:
        # every stage names its own arch, so no stage reports the misspelt default
        problems.add(("defaults", "model", "arch"),
                     f"unknown model '{arch}' (available: {', '.join(sorted(catalogue.models))})")
    _check_forward(problems, stages, catalogue, disabled)
    problems.raise_if_any()
    return Recipe(
        name=top.name,
        seed=top.seed,
        device=top.device,
        deterministic=top.deterministic,
        data=data,
        stages=stages,
        plugins=plugins,
        disabled=disabled,
    )


def _check_name(value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value) or set(value) == {"."}:
        raise ValueError("may contain only letters, digits and _ . - and must not be . or .. (it names the run "
                         f"directory), got {value!r}")


@attrs.frozen(kw_only=True)
class _TopLevel:
    name: str = field(validator=lambda _i, _a, value: _check_name(value))
    seed: int = field(default=0, validator=limits.seed)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True


def _structure_named(problems: Problems, raw: Any, selector: str, registry: dict, where: tuple, what: str):
    if not isinstance(raw, dict):
        problems.add(where, f"must be a table, got {raw!r}")
        return None
    raw = dict(raw)
    name = raw.pop(selector, None)
    if name is None:
        problems.add(where + (selector,), f"{selector} is required (one of: {', '.join(sorted(registry))})")
        return None
    if name not in registry:
        problems.add(where + (selector,), f"unknown {what} '{name}' (available: {', '.join(sorted(registry))})")
        return None
    try:
        entry = registry[name]  # imports its module (built-in models and data sets load when used)
    except KdlabError as exc:
        problems.add(where + (selector,), str(exc))
        return None
    config = problems.structure(raw, entry.config_class, where)
    if config is None:
        return None
    return DataSpec(name=name, config=config) if selector == "dataset" else ModelSpec(arch=name, config=config)


def _structure_plugin_table(problems: Problems, raw: Any, info, where: tuple):
    if raw is True:  # `logit_kd = true` enables with defaults
        raw = {}
    if not isinstance(raw, dict):
        problems.add(where, f"must be a table (or true), got {raw!r}")
        return None
    raw = {k: val for k, val in raw.items() if k != "enabled"}
    if info.config_class is None:
        for key in raw:
            problems.add(where + (key,), f"plugin '{info.name}' takes no settings, got '{key}'")
        return None
    return problems.structure(raw, info.config_class, where)


def _structure_default_plugins(problems: Problems, raw: Any, catalogue: Catalogue, kinds, dataset):
    """The tables of the default-on plugins that apply to the data (``kinds``), and the names
    switched off. A table for one that does not apply is an error: it would do nothing."""
    plugins, disabled = {}, []
    if not isinstance(raw, dict):
        problems.add(("plugins",), "plugins must be a table")
        raw = {}
    for name in raw:
        info = catalogue.plugins.get(name)
        if name in catalogue.broken:
            problems.add(("plugins", name), catalogue.broken[name])
            continue
        if info is None or not info.default_enabled:
            hint = " (it is a method: enable it under [stages.<stage>.methods])" if info else ""
            defaults = ", ".join(n for n, p in catalogue.plugins.items() if p.default_enabled)
            problems.add(("plugins", name), f"unknown default plugin '{name}'{hint}; default plugins: {defaults}")
    for name, info in catalogue.plugins.items():
        if not info.default_enabled:
            continue
        table = raw.get(name, {})
        enabled = table.get("enabled", True) if isinstance(table, dict) else True
        if not isinstance(enabled, bool):
            problems.add(("plugins", name, "enabled"), f"enabled must be true or false, got {enabled!r}")
        elif not enabled:
            disabled.append(name)
            continue
        if not info.applies_to(kinds):
            if name in raw:
                problems.add(("plugins", name), f"plugin '{name}' runs on {', '.join(sorted(info.data_kinds))} data; "
                                                f"data set '{dataset}' is {', '.join(sorted(kinds))}, so it would do "
                                                "nothing here: remove the table")
            continue
        plugins[name] = _structure_plugin_table(problems, table, info, ("plugins", name))
    return plugins, tuple(disabled)


def _structure_stage(problems: Problems, raw: dict, catalogue: Catalogue, where: tuple) -> StageConfig | None:
    raw = dict(raw)
    before = len(problems.items)
    model = _structure_named(problems, raw.pop("model", None) or {}, "arch", catalogue.models, where + ("model",), "model")
    methods = {}
    raw_methods = raw.pop("methods", {})
    if not isinstance(raw_methods, dict):
        problems.add(where + ("methods",), "methods must be a table of [methods.<name>] tables")
        raw_methods = {}
    for name, table in raw_methods.items():
        info = catalogue.plugins.get(name)
        if name in catalogue.broken:
            problems.add(where + ("methods", name), catalogue.broken[name])
            continue
        if info is None or info.default_enabled:
            why = f"'{name}' is on by default: configure it under [plugins.{name}]" if info else f"unknown method '{name}'"
            problems.add(where + ("methods", name), f"{why} (methods: {', '.join(catalogue.methods)})")
            continue
        if isinstance(table, dict) and not isinstance(table.get("enabled", True), bool):
            # "no" or 0 used to be taken as on: only TOML's true and false mean anything here
            problems.add(where + ("methods", name, "enabled"),
                         f"enabled must be true or false, got {table['enabled']!r}")
            continue
        if isinstance(table, dict) and table.get("enabled", True) is False:
            continue
        methods[name] = _structure_plugin_table(problems, table, info, where + ("methods", name))
    rest = problems.structure(raw, _StageRest, where)
    if len(problems.items) > before or rest is None:
        return None
    return StageConfig(model=model, methods=methods, **attrs.asdict(rest, recurse=False))


# The stage table minus the parts structured by hand above (model, methods), so that cattrs
# reports unknown keys with the allowed ones.
attrs.resolve_types(StageConfig, globals())
_StageRest = attrs.make_class(
    "_StageRest",
    {
        a.name: attrs.field(type=a.type, default=a.default, validator=a.validator, kw_only=True)
        for a in attrs.fields(StageConfig)
        if a.name not in ("model", "methods")
    },
    frozen=True,
)
_HAND_STRUCTURED = {_StageRest: ["methods", "model"]}


def _check_forward(problems: Problems, stages: dict, catalogue: Catalogue, disabled) -> None:
    """Every stage needs a plugin that computes the student's outputs (the default ``forward``):
    switching it off without a replacement used to end in a traceback in the first step."""
    on = [n for n, p in catalogue.plugins.items() if p.default_enabled and n not in disabled]
    for name, stage in stages.items():
        if stage is None:
            continue
        used = [*on, *stage.methods]
        if not any("kdlab_student_forward" in catalogue.plugins[n].hooks for n in used if n in catalogue.plugins):
            where = ("plugins", "forward", "enabled") if "forward" in disabled else ("stages", name)
            problems.add(where, f"stage '{name}': no enabled plugin computes the student's outputs "
                                "(kdlab_student_forward); keep the default 'forward' plugin on or add a method "
                                "that implements it")


def exported_later(ref: str) -> bool:
    """Whether a missing model file is named where a run exports its stages
    (``<run dir>/models/<stage>.pt``): an earlier recipe may produce it, so it must exist only
    when the stage that reads it starts (``kdlab validate`` notes it instead of failing)."""
    path = Path(ref)
    return not path.is_file() and path.suffix == ".pt" and path.parent.name == "models"


def pending_files(recipe) -> list[tuple[str, str, str]]:
    """(stage, key, file) of every teacher or init file that does not exist yet (see
    :func:`exported_later`)."""
    out = []
    for name, stage in recipe.stages.items():
        refs = [(f"teachers[{i}]", r) for i, r in enumerate(stage.teachers)]
        refs += [("init", stage.init)] if stage.init is not None else []
        out += [(name, key, ref) for key, ref in refs if ref not in recipe.stages and exported_later(ref)]
    return out


def _check_refs(problems: Problems, name: str, stage: StageConfig, earlier: list[str], where: tuple) -> None:
    for ref in stage.taps.teachers:
        if ref not in stage.teachers:
            problems.add(where + ("taps", "teachers", ref),
                         f"'{ref}' is not one of this stage's teachers ({', '.join(stage.teachers) or 'none'})")
    refs = [("teachers", i, r) for i, r in enumerate(stage.teachers)]
    if stage.init is not None:
        refs.append(("init", None, stage.init))
    for key, i, ref in refs:
        path = where + ((key, i) if i is not None else (key,))
        if ref == name:
            problems.add(path, f"stage '{name}' cannot use itself")
        elif ref in earlier:
            continue
        elif not Path(ref).is_file() and not exported_later(ref):
            problems.add(
                path,
                f"'{ref}' is neither an earlier stage ({', '.join(earlier) or 'none'}) nor an existing model file",
            )


# ---------------------------------------------------------------------------------------------
# Writing the resolved recipe back (run directories keep it as recipe.toml).
# ---------------------------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    """Unstructure, dropping None (TOML has no null) and turning tuples into lists."""
    data = CONVERTER.unstructure(obj)
    if isinstance(data, dict):
        return {k: _plain(x) for k, x in data.items() if x is not None}
    if isinstance(data, (list, tuple)):
        return [_plain(x) for x in data]
    return data


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data; loading it again gives an equal Recipe."""
    out: dict[str, Any] = {
        "name": recipe.name,
        "seed": recipe.seed,
        "device": recipe.device,
        "deterministic": recipe.deterministic,
        "data": {"dataset": recipe.data.name, **_plain(recipe.data.config)},
        "plugins": {n: _plain(c) for n, c in recipe.plugins.items() if c is not None},
        "stages": {},
    }
    out["plugins"].update({n: {"enabled": False} for n in recipe.disabled})
    for name, stage in recipe.stages.items():
        table = {a.name: _plain(getattr(stage, a.name)) for a in attrs.fields(StageConfig)
                 if a.name not in ("model", "methods") and getattr(stage, a.name) is not None}
        table["model"] = {"arch": stage.model.arch, **_plain(stage.model.config)}
        table["methods"] = {n: _plain(c) if c is not None else {} for n, c in stage.methods.items()}
        out["stages"][name] = table
    return out
