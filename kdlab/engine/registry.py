"""Plugin discovery through the ``kdlab.plugins`` entry-point group, and per-stage managers.

Built-in plugins are found exactly like third-party ones: by their entry points. The core never
imports a plugin module by name.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

import attrs
import pluggy
import torch

from kdlab.engine import hookspecs
from kdlab.engine.errors import KdlabError
from kdlab.engine.types import DeferredTerm

ENTRY_POINT_GROUP = "kdlab.plugins"
MODEL_GROUP = "kdlab.models"  # name -> (config class, build(config, data))
DATASET_GROUP = "kdlab.datasets"  # name -> (config class, build(config, seed))
log = logging.getLogger("kdlab")


class PluginDeprecationWarning(FutureWarning):
    """A plugin written the way of an older kdlab: it still works, for one more release.
    (A FutureWarning, so that it shows when the plugin runs, not only under a test runner.)"""


# hooks of older releases -> what replaced them, for the error a plugin implementing one gets
REMOVED_HOOKS = {
    "kdlab_dataset_configs": "register data sets under the kdlab.datasets entry-point group, or with "
                             "kdlab_register_datasets",
    "kdlab_model_configs": "register architectures under the kdlab.models entry-point group, or with "
                           "kdlab_register_models",
    "kdlab_build_data": "give the data set's build function to its kdlab.datasets entry point",
    "kdlab_build_model": "give the architecture's build function to its kdlab.models entry point",
}


def _constructor_takes(factory: object) -> tuple[str, ...]:
    """Which of ``config`` and ``stage`` a plugin class's ``__init__`` accepts (by name)."""
    if not inspect.isclass(factory) or factory.__init__ is object.__init__:
        return ()
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(name for name in ("config", "stage") if name in params)


@attrs.frozen(kw_only=True)
class PluginInfo:
    name: str  # entry-point name: the plugin's table name in recipes
    factory: object  # a class (instantiated per stage) or a module/object (used as is)
    origin: str  # "package:object (distribution version)"
    default_enabled: bool
    config_class: type | None
    hooks: tuple[str, ...]
    # what the class's __init__ takes of (config, stage): () for a plugin built with no arguments
    takes: tuple[str, ...] = ()
    # the data kinds it applies to (its class attribute ``data_kinds``); None: every kind
    data_kinds: frozenset[str] | None = None
    # it joins a stage only with several processes (the class attribute ``distributed_only``)
    distributed_only: bool = False

    def instantiate(self, config: object = None, view: object = None) -> object:
        """A fresh instance for one stage: ``config`` is its structured recipe table (None for a
        plugin without settings), ``view`` the stage's :class:`~kdlab.StageView`."""
        if not inspect.isclass(self.factory):
            return self.factory
        if not self.takes and self.config_class is not None:
            warnings.warn(f"plugin '{self.name}' ({self.origin}) is built without its config and reads it with "
                          "stage.config_for(self), which is deprecated and goes in the next release: take it in "
                          "the constructor, def __init__(self, config) (see CONTRIBUTING.md)",
                          PluginDeprecationWarning, stacklevel=3)
        given = {"config": config, "stage": view}
        try:
            return self.factory(**{name: given[name] for name in self.takes})
        except Exception as exc:  # noqa: BLE001 - a plugin author's mistake: name the plugin
            raise KdlabError(f"plugin '{self.name}' ({self.origin}) failed to build: {type(exc).__name__}: {exc}") from exc

    def applies_to(self, kinds: frozenset[str] | None) -> bool:
        """Whether a default-on plugin joins a stage whose data set has ``kinds`` (None: it
        does not say, so every plugin does)."""
        return self.data_kinds is None or kinds is None or bool(self.data_kinds & kinds)


@attrs.frozen(kw_only=True)
class Registered:
    """One data set or model architecture: its recipe name, the attrs class its table is
    structured into, the function that builds it, and where it came from (an entry point, or the
    plugin whose ``kdlab_register_*`` hook added it)."""

    name: str
    config_class: type
    # models: build(config, data) -> nn.Module; data sets: build(config, seed) -> DataBundle
    build: Callable[..., Any]
    plugin: str


class Registry:
    """Names -> (config class, builder), in one place. Two ways in:

    - an entry point of the registry's own group (``kdlab.models``, ``kdlab.datasets``): its name
      is the recipe's name, its value a ``(config_class, build)`` pair, or a function that takes
      the name and returns one (for families such as the CIFAR table). It is imported only when a
      recipe uses the name, so a broken optional module (a speech model whose torchaudio does not
      load) stops only the recipes that use it, with one line naming the module, the error and
      the fix;
    - a plugin's ``kdlab_register_models`` / ``kdlab_register_datasets`` hook calling :meth:`add`
      (in the spirit of tox's ``tox_register_tox_env``).

    A name registered twice is an error naming both. Read-only as a mapping of names to
    :class:`Registered`."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Registered] = {}
        self._pending: dict[str, tuple[Any, str]] = {}  # name -> (entry point, "value (dist)")
        self._plugin = "?"  # the plugin whose hook is running (set by discover)

    def add(self, name: str, config_class: type, build: Callable[..., Any]) -> None:
        """Register ``name``: recipes select it (``arch = name`` / ``dataset = name``), its table
        is structured into ``config_class`` (a frozen attrs class), and ``build`` makes it."""
        if not isinstance(name, str) or not name:
            raise KdlabError(f"plugin '{self._plugin}': a {self.what} name must be a non-empty string, got {name!r}")
        if name in self:
            raise KdlabError(f"{self.what} '{name}' is declared by two plugins: {self._origin(name)} "
                             f"and {self._plugin}")
        self._entries[name] = self._checked(name, config_class, build, self._plugin, f"plugin '{self._plugin}'")

    def add_entry_point(self, ep, origin: str) -> None:
        """Register ``ep`` (an entry point of this registry's group) under its name, unloaded."""
        if ep.name in self:
            raise KdlabError(f"{self.what} '{ep.name}' is declared twice: {self._origin(ep.name)} and {origin}")
        self._pending[ep.name] = (ep, origin)

    def _origin(self, name: str) -> str:
        return self._pending[name][1] if name in self._pending else self._entries[name].plugin

    def _checked(self, name, config_class, build, plugin: str, who: str) -> Registered:
        where = f"{who}: {self.what} '{name}'"
        if not (inspect.isclass(config_class) and attrs.has(config_class)):
            raise KdlabError(f"{where}: the config class must be an attrs class, got {config_class!r}")
        if not callable(build):
            raise KdlabError(f"{where}: the builder must be callable, got {build!r}")
        return Registered(name=name, config_class=config_class, build=build, plugin=plugin)

    def _load(self, name: str) -> Registered:
        ep, origin = self._pending[name]
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of an optional module
            raise KdlabError(
                f"{self.what} '{name}' ({origin}) failed to import: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}; fix: reinstall with the tested set "
                "(pip install -c constraints.txt -e .) or pip install the missing package") from exc
        try:
            pair = obj if isinstance(obj, tuple) else obj(name)
            config_class, build = pair
        except Exception as exc:  # noqa: BLE001 - a wrong entry-point value is its author's mistake
            raise KdlabError(f"{self.what} '{name}' ({origin}): the entry point must name a (config_class, build) "
                             f"pair or a function of the name returning one ({type(exc).__name__}: {exc})") from exc
        entry = self._checked(name, config_class, build, origin, f"entry point {origin}")
        del self._pending[name]
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> Registered:
        if name in self._pending:
            return self._load(name)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._pending

    def __iter__(self) -> Iterator[str]:
        return iter([*self._entries, *self._pending])

    def __len__(self) -> int:
        return len(self._entries) + len(self._pending)

    def items(self):
        """Every entry, loaded (``kdlab plugins``); one that fails to import raises its error."""
        return [(name, self[name]) for name in list(self)]


@attrs.frozen(kw_only=True)
class Catalogue:
    """Every installed plugin with what it declared: its config class, data sets, models."""

    plugins: dict[str, PluginInfo]
    datasets: Registry
    models: Registry
    broken: dict[str, str] = attrs.Factory(dict)  # name -> why it was left out

    @property
    def methods(self) -> list[str]:
        return sorted(n for n, p in self.plugins.items() if not p.default_enabled)

    def manager(self, names: list[str], configs: dict[str, object] | None = None,
                view: object = None) -> pluggy.PluginManager:
        """A fresh plugin manager with fresh instances of the named plugins registered, each
        built with its table from ``configs`` and the stage's ``view``."""
        pm = new_manager()
        for name in names:
            plugin = self.plugins[name].instantiate((configs or {}).get(name), view)
            _check_loss_terms_of(plugin, name)
            pm.register(plugin, name=name)
        return pm


def _check_loss_terms_of(plugin: object, name: str) -> None:
    """Give a plugin instance its own checked ``kdlab_loss_terms`` (see below) before it is
    registered: pluggy reads the hookimpl marker from the attribute, which functools.wraps
    copies, so no pluggy internals are touched. Modules are shared, not per stage: left as
    they are (the loop's sum still fails on a wrong term, without the plugin's name)."""
    method = getattr(plugin, "kdlab_loss_terms", None)
    opts = getattr(method, f"{hookspecs.PROJECT}_impl", None)
    if inspect.ismodule(plugin) or not isinstance(opts, dict) or opts.get("wrapper") or opts.get("hookwrapper"):
        return  # a wrapper's result is the others' list
    try:
        plugin.kdlab_loss_terms = functools.wraps(method)(_checked_loss_terms(method, name))
    except AttributeError:  # a class with __slots__ or frozen: unchecked, like a module
        pass


def _checked_loss_terms(function: Callable, plugin: str) -> Callable:
    """Wrap one plugin's ``kdlab_loss_terms`` so that a wrong result is an error naming the
    plugin and the term at the step it happens (the first, in practice), rather than a traceback
    from the core's sum later. Type and shape checks only: no device synchronisation."""
    def checked(*args):
        result = function(*args)
        if result is None:
            return None
        if not isinstance(result, dict):
            raise KdlabError(f"plugin '{plugin}': kdlab_loss_terms returned a {type(result).__name__}; "
                             "return a dict of term name -> scalar tensor, or None")
        for name, term in result.items():
            if isinstance(name, str) and isinstance(term, DeferredTerm):
                continue  # evaluated by the core with the others of its kind
            if not isinstance(name, str) or not torch.is_tensor(term) or term.dim() != 0 or not term.is_floating_point():
                got = (f"a tensor of shape {tuple(term.shape)} and dtype {term.dtype}" if torch.is_tensor(term)
                       else f"a {type(term).__name__}")
                raise KdlabError(f"plugin '{plugin}': loss term {name!r} is {got}; a loss term must be a "
                                 "floating-point scalar tensor (e.g. reduce it with .mean())")
        return result

    return checked


class _Manager(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin, name):
        # pluggy inspects every attribute of a plugin (inspect.getattr_static, slow); names that
        # start with "_" (object's dunders, private helpers) are never hooks. A tenth of a short
        # run's time went here: discovery and every stage register each plugin.
        if name.startswith("_"):
            return None
        return super().parse_hookimpl_opts(plugin, name)


def new_manager() -> pluggy.PluginManager:
    pm = _Manager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def discover(extra: dict[str, object] | None = None) -> Catalogue:
    """Load every plugin declared under the entry-point group (plus ``extra``, for tests).

    A plugin that fails to import, fails pluggy's validation, implements a hook that does not
    exist, or has ``kdlab_*`` methods without ``@hookimpl`` is left out and recorded in
    ``Catalogue.broken`` with the reason: the other plugins keep working (``kdlab plugins``
    lists it), and a recipe that uses it gets the reason as its error."""
    found: dict[str, tuple[object, str]] = {}
    broken: dict[str, str] = {}
    labels: dict[object, str] = {}  # distribution -> "name version": its metadata parsed once, not per plugin
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = _dist_label(ep, labels)
        if ep.name in found and found[ep.name][1] != f"{ep.value} ({dist})":
            raise KdlabError(
                f"plugin name '{ep.name}' is declared twice: {found[ep.name][1]} and {ep.value} ({dist})"
            )
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken third-party package must not hide the others
            broken[ep.name] = f"plugin '{ep.name}' ({ep.value}, {dist}) failed to load: {type(exc).__name__}: {exc}"
            continue
        found[ep.name] = (obj, f"{ep.value} ({dist})")
    for name, obj in (extra or {}).items():
        found[name] = (obj, f"{_qualname(obj)} (registered in-process)")

    takes: dict[str, tuple[str, ...]] = {}  # what each class's __init__ takes, inspected once
    pm = new_manager()
    for name, (obj, origin) in list(found.items()):
        problem = _undecorated(obj)
        if problem is None:
            try:
                # a plugin built with its config is registered here without one (its __init__
                # not run): discovery only reads its hooks and declarations
                takes[name] = _constructor_takes(obj)
                pm.register((obj.__new__(obj) if takes[name] else obj()) if inspect.isclass(obj) else obj, name=name)
            except Exception as exc:  # noqa: BLE001 - pluggy's validation, or the class's __init__
                problem = str(exc).split("\n")[0]
        if problem is not None:
            broken[name] = f"plugin '{name}' ({origin}) is invalid: {problem}"
            del found[name]
    for hook_name in dir(pm.hook):
        caller = getattr(pm.hook, hook_name)
        if hook_name.startswith("kdlab_") and getattr(caller, "spec", None) is None:
            for impl in caller.get_hookimpls():  # a misspelt hook would otherwise never be called
                why = (f"the hook '{hook_name}', which was removed: {REMOVED_HOOKS[hook_name]}"
                       if hook_name in REMOVED_HOOKS else f"an unknown hook '{hook_name}' (see kdlab.engine.hookspecs)")
                broken[impl.plugin_name] = f"plugin '{impl.plugin_name}' ({found[impl.plugin_name][1]}) implements {why}"
    for name in broken:
        if name in found:
            pm.unregister(name=name)
            del found[name]
    for message in broken.values():
        log.warning("%s; it is skipped", message)

    # the hook, where a plugin computes its class; otherwise the class attribute `config_class`
    config_classes = {impl.plugin_name: impl.function() for impl in pm.hook.kdlab_config_class.get_hookimpls()}
    plugins = {}
    for name, (obj, origin) in sorted(found.items()):
        plugin = pm.get_plugin(name)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        plugins[name] = PluginInfo(
            name=name,
            factory=obj,
            origin=origin,
            default_enabled=bool(getattr(obj, "default_enabled", False)),
            config_class=config_classes.get(name, getattr(obj, "config_class", None)),
            hooks=hooks,
            takes=takes[name],
            data_kinds=None if getattr(obj, "data_kinds", None) is None else frozenset(obj.data_kinds),
            distributed_only=bool(getattr(obj, "distributed_only", False)),
        )
    return Catalogue(
        plugins=plugins,
        datasets=_registry(DATASET_GROUP, labels, pm.hook.kdlab_register_datasets, "data set"),
        models=_registry(MODEL_GROUP, labels, pm.hook.kdlab_register_models, "model architecture"),
        broken=broken,
    )


def _qualname(obj: object) -> str:
    """``module:Name`` of a plugin class or module (what an entry point would say), not a repr."""
    if inspect.ismodule(obj):
        return obj.__name__
    cls = obj if inspect.isclass(obj) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _undecorated(obj: object) -> str | None:
    """A ``kdlab_*`` method without ``@hookimpl`` is never called: say which, instead of a no-op."""
    marker = f"{hookspecs.PROJECT}_impl"
    names = [n for n in dir(obj) if n.startswith("kdlab_") and callable(getattr(obj, n, None))
             and not hasattr(getattr(obj, n), marker)]
    if names:
        return f"{', '.join(names)} lack{'s' if len(names) == 1 else ''} the @hookimpl decorator, so kdlab would never call them"
    kinds = getattr(obj, "data_kinds", None)
    if kinds is not None and (not isinstance(kinds, (set, frozenset, tuple, list))
                              or not all(isinstance(k, str) for k in kinds)):
        return f"data_kinds must be a set of strings such as {{'image'}}, got {kinds!r}"
    return None


def _dist_label(ep, labels: dict) -> str:
    """``"name version"`` of an entry point's distribution, its metadata parsed once."""
    if ep.dist is None:
        return "unknown distribution"
    if ep.dist not in labels:
        meta = ep.dist.metadata
        labels[ep.dist] = f"{meta['Name']} {meta['Version']}"
    return labels[ep.dist]


def _registry(group: str, labels: dict, register_hook, what: str) -> Registry:
    """Fill a registry from the entry points of ``group`` (imported when used), then every
    plugin's ``kdlab_register_*`` hook."""
    registry = Registry(what)
    for ep in entry_points(group=group):
        registry.add_entry_point(ep, f"{ep.value} ({_dist_label(ep, labels)})")
    for impl in register_hook.get_hookimpls():
        registry._plugin = impl.plugin_name
        impl.function(*[registry for _ in impl.argnames])  # the one argument, if taken
    registry._plugin = "?"
    return registry


def call_order(pm: pluggy.PluginManager) -> dict[str, list[str]]:
    """For each hook with implementations, in the order the hooks fire
    (``hookspecs.FIRING_ORDER``): plugin names in the order pluggy calls them."""
    order = {}
    for name in hookspecs.FIRING_ORDER:
        impls = getattr(pm.hook, name).get_hookimpls()
        if impls:
            # pluggy calls wrappers first, then the rest from the end of its list to the start
            wrappers = [i for i in impls if i.hookwrapper or i.wrapper]
            plain = [i for i in impls if not (i.hookwrapper or i.wrapper)]
            order[name] = [f"{i.plugin_name} (wrapper)" for i in reversed(wrappers)] + [
                i.plugin_name for i in reversed(plain)
            ]
    return order
