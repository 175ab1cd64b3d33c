"""The method registry: the plugin manager, entry-point discovery, and loading a method by name.

Built-in methods are a plugin like any other (`kvbench.methods`); a third-party package adds its
own with one entry point in the group "kvbench" pointing at a module (or object) that implements
the `kvbench_methods` hook. A plugin that fails to load is reported in a warning and skipped; the
other methods still load.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import re
import types
import typing
import warnings
from dataclasses import dataclass

import pluggy

from kvbench import methods as builtin
from kvbench.hooks import PROJECT, MethodSpecs, hookimpl, hookspec  # noqa: F401 - hookimpl/hookspec: public names
from kvbench.method import Method

ENTRY_POINT_GROUP = "kvbench"


class PluginWarning(UserWarning):
    """A plugin or one of its methods could not be loaded; the others still are."""


@dataclass(frozen=True)
class MethodEntry:
    method_class: type[Method]
    source: str  # the plugin it comes from: "kvbench (built-in)" or "distribution X.Y (entry point name)"


def plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with the built-in methods and every installed `kvbench` entry point."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(MethodSpecs)
    manager.register(builtin, name=f"{PROJECT} (built-in)")
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = _describe(entry_point)
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=source)
        except Exception as error:  # a broken plugin must not take the others down
            warnings.warn(
                f"kvbench plugin {source} failed to load: {type(error).__name__}: {error}", PluginWarning, stacklevel=2
            )
            continue
        _refuse_unknown_hooks(manager, plugin, source)
    return manager


def _refuse_unknown_hooks(manager: pluggy.PluginManager, plugin, source: str) -> None:
    """A hook implementation that matches no kvbench hook (a misspelt `kvbench_method`) would be ignored in silence:
    it is named in a warning, and the plugin is left out."""
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        manager.unregister(plugin)
        warnings.warn(
            f"kvbench plugin {source} left out: {error} (kvbench's hooks: "
            f"{', '.join(name for name in dir(MethodSpecs) if name.startswith('kvbench_'))})",
            PluginWarning,
            stacklevel=3,
        )


@functools.cache
def registry() -> dict[str, MethodEntry]:
    """Every registered method by name (built once per process; `refresh()` rebuilds it)."""
    return build_registry(plugin_manager())


def refresh() -> None:
    registry.cache_clear()


def build_registry(manager: pluggy.PluginManager) -> dict[str, MethodEntry]:
    entries: dict[str, MethodEntry] = {}
    for implementation in manager.hook.kvbench_methods.get_hookimpls():
        source = implementation.plugin_name
        try:
            classes = list(implementation.function() or [])
        except Exception as error:
            warnings.warn(f"kvbench plugin {source} failed in kvbench_methods(): {error}", PluginWarning, stacklevel=2)
            continue
        for method_class in classes:
            problems = contract_problems(method_class)
            if problems:
                label = getattr(method_class, "__qualname__", repr(method_class))
                warnings.warn(
                    f"kvbench plugin {source}: method {label} refused: {'; '.join(problems)}",
                    PluginWarning,
                    stacklevel=2,
                )
                continue
            name = method_class.name
            if name in entries:
                raise ValueError(
                    f"two methods are registered as {name!r}: one from {entries[name].source}, "
                    f"one from {source}; uninstall or rename one of them"
                )
            entries[name] = MethodEntry(method_class, source)
    return dict(sorted(entries.items()))


def contract_problems(method_class) -> list[str]:
    """What a class lacks to be a method (empty when it is fine)."""
    if not (isinstance(method_class, type) and issubclass(method_class, Method)):
        return ["not a subclass of kvbench.Method"]
    problems = []
    if not dataclasses.is_dataclass(method_class) or "__dataclass_fields__" not in vars(method_class):
        problems.append("not decorated with @dataclass (its fields are its parameters)")
    name = getattr(method_class, "name", "")
    if not (isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_\-]*", name)):
        problems.append(f"missing or bad `name` (lower-case letters, digits, '_' or '-'; got {name!r})")
    if not (isinstance(method_class.category, str) and method_class.category):
        problems.append("missing `category` (e.g. full, recency, score, quantization)")
    knob = method_class.knob
    if knob is not None and dataclasses.is_dataclass(method_class):
        if knob not in {field.name for field in dataclasses.fields(method_class)}:
            problems.append(f"`knob` {knob!r} is not one of its parameters")
    return problems


def list_methods() -> list[str]:
    return list(registry())


def method_class(name: str) -> type[Method]:
    entries = registry()
    if name not in entries:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(entries)}")
    return entries[name].method_class


def load_method(name: str, **params) -> Method:
    """An instance of method `name`; parameters may be strings (from a command line) and are converted."""
    cls = method_class(name)
    return cls(**coerce_params(cls, params))


def describe_parameters(cls: type[Method]) -> str:
    return ", ".join(f"{field.name} (default {field.default!r})" for field in dataclasses.fields(cls))


def coerce_params(cls: type[Method], params: dict) -> dict:
    """Check parameter names and turn strings into the fields' types, naming what is wrong."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    converted = {}
    # A wrapper (adakv, chunkkv) collects the parameters that are not its own for the method it wraps, which checks them.
    extra = getattr(cls, "extra_params", None)
    for key, value in params.items():
        if extra is not None and key not in fields:
            converted.setdefault(extra, {})[key] = value
            continue
        if key not in fields:
            raise ValueError(
                f"method {cls.name!r} has no parameter {key!r}; its parameters: {describe_parameters(cls) or 'none'}"
            )
        converted[key] = _convert(cls.name, key, value, hints.get(key, str))
    return converted


def _convert(method: str, key: str, value, hint):
    if not isinstance(value, str):
        return value
    options = [option for option in typing.get_args(hint) if option is not type(None)]
    is_optional = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    if is_optional and value.lower() in ("none", "null", ""):
        return None
    target = options[0] if is_optional and len(options) == 1 else hint
    try:
        if target is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if target in (int, float):
            return target(value)
    except ValueError:
        raise ValueError(f"parameter {key!r} of method {method!r} must be {target.__name__}; got {value!r}") from None
    return value


def _describe(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    package = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"{package} (entry point {entry_point.name!r})"
