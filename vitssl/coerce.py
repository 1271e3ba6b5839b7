"""A value parsed from YAML or ``--set``, checked and converted to a config field's type."""

from __future__ import annotations

import types
import typing
from typing import Any

import yaml

from vitssl.errors import VitsslError


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check and convert a parsed value to the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except VitsslError as exc:
                errors.append(str(exc))
        raise VitsslError(errors[0] if errors else f"bad value for '{key}': {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            value = [yaml.safe_load(v) for v in value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if args and args[-1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise VitsslError(f"'{key}' needs {len(args)} values, got {len(value)}: {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise VitsslError(f"'{key}' needs a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and value is not None and not isinstance(value, (dict, list)):
        return str(value)
    need = "true or false" if hint is bool else f"a {getattr(hint, '__name__', hint)}"
    raise VitsslError(f"'{key}' needs {need}, got {value!r}")
