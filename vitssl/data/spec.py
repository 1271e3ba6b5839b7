"""Data specs, parsed in one place: ``KIND:ARGUMENT[:SPLIT]``, KIND a registered source."""

from __future__ import annotations

from dataclasses import dataclass

from vitssl.data.source import SPLITS, Source
from vitssl.errors import VitsslError

__all__ = ["SPLITS", "DataSpec", "get_source", "parse_spec", "source_kinds"]


@dataclass(frozen=True)
class DataSpec:
    """``kind`` names a registered source; ``target`` a dataset name, path or URL pattern."""

    kind: str
    target: str
    split: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" + (f":{self.split}" if self.split else "")


def source_kinds() -> list[str]:
    """The spec prefixes the registered source plugins provide."""
    from vitssl.plugins import get_registry

    return get_registry().names("sources")


def get_source(kind: str) -> Source:
    """The registered source for a spec prefix."""
    from vitssl.plugins import get_registry

    factory = get_registry().get("sources", kind)
    return factory() if isinstance(factory, type) else factory


def _expected() -> str:
    from vitssl.plugins import get_registry

    entries = get_registry().entries["sources"]
    shown = [getattr(e.factory, "example", "") or f"{name}:..." for name, e in
             sorted(entries.items())]
    return ", ".join(shown) or "none (no source plugin is loaded: see VITSSL_PLUGINS)"


def parse_spec(spec: str) -> DataSpec:
    """``"builtin:digits"``, ``"folder:/data/imgs"``, ``"vtab1k:/data/vtab-1k/dtd:test"``...

    The registered source for KIND splits the rest into a target and an
    optional trailing ``:SPLIT`` (``wds:`` never does: URLs hold colons).
    """
    kind, sep, rest = str(spec).partition(":")
    if not sep or not rest or kind not in source_kinds():
        raise VitsslError(f"bad data spec '{spec}': expected one of {_expected()}")
    target, split = get_source(kind).parse(rest)
    return DataSpec(kind, target, split)
