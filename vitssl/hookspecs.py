"""The plugin API: five register-callback hooks.

A plugin module implements any of them with ``@vitssl.hookimpl`` and calls
``register(name, factory)`` once per thing it provides::

    @vitssl.hookimpl
    def register_objectives(register):
        register("my-objective", MyObjective)
"""

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("vitssl")
hookimpl = pluggy.HookimplMarker("vitssl")

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def register_objectives(register: Register) -> None:
    """Register pretraining objectives: :class:`vitssl.Objective` subclasses (the contract)."""


@hookspec
def register_stems(register: Register) -> None:
    """Register patch stems: ``factory(image_size=, patch_size=, in_chans=, embed_dim=,
    **options)`` -> a module mapping images (B, C, H, W), C = ``in_chans`` (kept as its
    ``in_chans``), to tokens (B, N, D), with ``grid_size``.
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluators: ``factory(**options)`` with ``.run(encoder, task) -> dict``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register built-in datasets: ``factory(split=..., **options) -> map-style dataset``."""


@hookspec
def register_sources(register: Register) -> None:
    """Register data sources by spec prefix: a :class:`vitssl.data.source.Source` subclass."""
