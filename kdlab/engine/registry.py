"""Plugin discovery through the ``kdlab.plugins`` entry-point group, and per-stage managers.

Built-in plugins are found exactly like third-party ones: by their entry points. The core never
imports a plugin module by name.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points

import attrs
import pluggy

from kdlab.engine import hookspecs
from kdlab.engine.errors import KdlabError

ENTRY_POINT_GROUP = "kdlab.plugins"


@attrs.frozen(kw_only=True)
class PluginInfo:
    name: str  # entry-point name: the plugin's table name in recipes
    factory: object  # a class (instantiated per stage) or a module/object (used as is)
    origin: str  # "package:object (distribution version)"
    default_enabled: bool
    config_class: type | None
    hooks: tuple[str, ...]

    def instantiate(self) -> object:
        return self.factory() if inspect.isclass(self.factory) else self.factory


@attrs.frozen(kw_only=True)
class Catalogue:
    """Every installed plugin with what it declared: its config class, data sets, models."""

    plugins: dict[str, PluginInfo]
    datasets: dict[str, type]
    models: dict[str, type]

    @property
    def methods(self) -> list[str]:
        return sorted(n for n, p in self.plugins.items() if not p.default_enabled)

    def manager(self, names: list[str]) -> pluggy.PluginManager:
        """A fresh plugin manager with fresh instances of the named plugins registered."""
        pm = new_manager()
        for name in names:
            pm.register(self.plugins[name].instantiate(), name=name)
        return pm


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def discover(extra: dict[str, object] | None = None) -> Catalogue:
    """Load every plugin declared under the entry-point group (plus ``extra``, for tests)."""
    found: dict[str, tuple[object, str]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
        if ep.name in found and found[ep.name][1] != f"{ep.value} ({dist})":
            raise KdlabError(
                f"plugin name '{ep.name}' is declared twice: {found[ep.name][1]} and {ep.value} ({dist})"
            )
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party package must not hide the others' names
            raise KdlabError(f"plugin '{ep.name}' ({ep.value}, {dist}) failed to load: {exc!r}") from exc
        found[ep.name] = (obj, f"{ep.value} ({dist})")
    for name, obj in (extra or {}).items():
        found[name] = (obj, f"{getattr(obj, '__module__', obj)!s} (registered in-process)")

    pm = new_manager()
    for name, (obj, origin) in found.items():
        try:
            pm.register(obj() if inspect.isclass(obj) else obj, name=name)
        except pluggy.PluginValidationError as exc:
            raise KdlabError(f"plugin '{name}' ({origin}) is invalid: {exc}") from exc
    try:
        pm.check_pending()  # a misspelt kdlab_* hook name is an error, not a silent no-op
    except pluggy.PluginValidationError as exc:
        plugin = getattr(exc, "plugin", None)
        name = pm.get_name(plugin) if plugin is not None else "?"
        raise KdlabError(f"plugin '{name}' implements an unknown hook: {exc}") from exc

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
            config_class=config_classes.get(name),
            hooks=hooks,
        )
    return Catalogue(
        plugins=plugins,
        datasets=_merge_declarations(pm.hook.kdlab_dataset_configs, "data set"),
        models=_merge_declarations(pm.hook.kdlab_model_configs, "model architecture"),
    )


def _merge_declarations(hook, what: str) -> dict[str, type]:
    merged: dict[str, type] = {}
    owner: dict[str, str] = {}
    for impl in hook.get_hookimpls():
        for key, cls in (impl.function() or {}).items():
            if key in merged:
                raise KdlabError(f"{what} '{key}' is declared by two plugins: {owner[key]} and {impl.plugin_name}")
            merged[key], owner[key] = cls, impl.plugin_name
    return merged


def call_order(pm: pluggy.PluginManager) -> dict[str, list[str]]:
    """For each hook with implementations: plugin names in the order pluggy calls them."""
    order = {}
    for name in sorted(n for n in dir(pm.hook) if n.startswith("kdlab_")):
        impls = getattr(pm.hook, name).get_hookimpls()
        if impls:
            # pluggy calls wrappers first, then the rest from the end of its list to the start
            wrappers = [i for i in impls if i.hookwrapper or i.wrapper]
            plain = [i for i in impls if not (i.hookwrapper or i.wrapper)]
            order[name] = [f"{i.plugin_name} (wrapper)" for i in reversed(wrappers)] + [
                i.plugin_name for i in reversed(plain)
            ]
    return order
