"""The plugin host: built-ins and third-party packages, loaded through entry points.

Every plugin, built-in or not, is a module named by an entry point of the
``vitssl`` group. Each is loaded and called in isolation: one that fails to
import, implements an unknown hook, raises, or registers a name already taken
is recorded in :attr:`Registry.failures` and the rest keep working.

``VITSSL_PLUGINS=a,b`` loads only the named entry points;
``VITSSL_DISABLE_PLUGINS=a,b`` skips the named ones.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from vitssl import hookspecs
from vitssl.errors import VitsslError
from vitssl.objective import is_objective_class

GROUP = "vitssl"
KINDS = ("objectives", "stems", "evaluators", "datasets", "sources")
SINGULAR = {"objectives": "objective", "stems": "stem", "evaluators": "evaluator",
            "datasets": "dataset", "sources": "data source"}


@dataclass(frozen=True)
class Entry:
    """One registered factory and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or called, and why."""

    plugin: str
    distribution: str
    error: str


def suggest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, else an empty string."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass
class Registry:
    """Everything the plugins registered, by kind and name."""

    entries: dict[str, dict[str, Entry]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS})
    failures: list[PluginFailure] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def entry(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; a :class:`VitsslError` listing the choices if unknown."""
        if name not in self.entries[kind]:
            raise VitsslError(f"unknown {SINGULAR[kind]} '{name}'{suggest(name, self.names(kind))}"
                              f"; registered: {', '.join(self.names(kind)) or 'none'}")
        return self.entries[kind][name]

    def get(self, kind: str, name: str) -> Callable[..., Any]:
        return self.entry(kind, name).factory

    def add(self, kind: str, name: str, factory: Callable[..., Any], *, plugin: str,
            distribution: str) -> None:
        """Register a factory, or record why its plugin may not (not an objective, taken)."""
        taken = self.entries[kind].get(name)
        if kind == "objectives" and not is_objective_class(factory):
            error = f"objective '{name}' is not a vitssl.Objective subclass ({factory!r})"
        elif taken is not None:
            error = f"{SINGULAR[kind]} '{name}' is already registered by {taken.distribution} " \
                    f"({taken.plugin})"
        else:
            self.entries[kind][name] = Entry(kind, name, factory, plugin, distribution)
            return
        self.failures.append(PluginFailure(plugin, distribution, error))


def _names(variable: str) -> set[str]:
    return {n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()}


def _selected_entry_points(registry: Registry) -> list[EntryPoint]:
    only, blocked = _names("VITSSL_PLUGINS"), _names("VITSSL_DISABLE_PLUGINS")
    available = {ep.name for ep in entry_points(group=GROUP)}
    for var, names in (("VITSSL_PLUGINS", only), ("VITSSL_DISABLE_PLUGINS", blocked)):
        for name in sorted(names - available):
            registry.failures.append(PluginFailure(
                name, "unknown", f"{var} names no installed entry point '{name}'; available: "
                                 f"{', '.join(sorted(available))}"))
    chosen = [ep for ep in entry_points(group=GROUP)
              if (not only or ep.name in only) and ep.name not in blocked]
    # Built-ins first, so a third-party package cannot shadow them.
    return sorted(chosen, key=lambda ep: (_distribution(ep) != "vitssl", ep.name))


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "unknown"


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def build_registry() -> Registry:
    """Load every selected entry point and collect what it registers."""
    registry = Registry()
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    distributions: dict[str, str] = {}
    for ep in _selected_entry_points(registry):
        dist = _distribution(ep)
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the host
            registry.failures.append(PluginFailure(ep.name, dist, _short(exc)))
            continue
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(name=ep.name)
            registry.failures.append(PluginFailure(ep.name, dist, _short(exc)))
            continue
        distributions[ep.name] = dist
    for kind in KINDS:
        for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
            plugin, dist = impl.plugin_name, distributions[impl.plugin_name]
            register = functools.partial(registry.add, kind, plugin=plugin, distribution=dist)
            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001
                registry.failures.append(PluginFailure(plugin, dist, _short(exc)))
    return registry


_cached: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use."""
    global _cached
    if _cached is None or refresh:
        _cached = build_registry()
    return _cached
