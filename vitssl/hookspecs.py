"""The plugin API: four register-callback hooks.

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
    """Register pretraining objectives: ``factory(encoder=..., **options) -> nn.Module``.

    ``forward(batch)`` returns ``{"loss": scalar tensor, **metrics}`` (metrics are
    floats or 0-d tensors; tensors are read only at logging steps). ``batch`` holds
    ``"image"`` (B, 3, H, W) normalised, ``"pixels"`` the same in [0, 1],
    ``"label"`` (B,) for labelled data, ``"sample_seed"`` (B,) a seed per sample
    (fixed by its position in the run's sample stream, whatever the rank), and
    ``"step"`` / ``"total_steps"`` (ints: the optimiser step being taken, from 0,
    and the run's length) so schedules are pure functions of progress.

    Optional attributes, all read by the one pretraining loop:

    - ``requires_labels = True``: the loop refuses unlabelled data.
    - ``views(image_size, data) -> transform``: the transform maps one image (PIL
      or uint8 tensor) to ``{name: (V, 3, S, S) uint8 tensor}``; it runs in the
      data workers, seeded per sample (same step and seed, same views; a
      sample's views do not depend on the number of ranks). The batch then holds
      ``"views"`` (name -> (B, V, 3, S, S) normalised) and ``"view_pixels"`` (the
      same in [0, 1]) instead of ``"image"`` / ``"pixels"``. ``data`` is the
      resolved data config (e.g. ``data.hflip``: whether a flip keeps labels).
    - ``before_optimizer_step(step, total_steps)``: after gradients are ready
      (all-reduced, unscaled and clipped), before the optimiser step;
      ``after_optimizer_step(step, total_steps)``: after it. Each runs once per
      optimiser step (not per micro-batch), on every rank.
    - State a resumed run needs (an EMA teacher, a centre, counters) lives in
      parameters or registered buffers, so checkpoints hold it; parameters with
      ``requires_grad=False`` stay out of the optimiser, clipping and gradient
      sync. Buffers are broadcast from rank 0 under DDP: keep per-rank running
      sums as plain attributes and all-reduce them in a step hook. DDP needs a
      gradient for every trainable parameter: freeze what the objective never
      uses (e.g. ``encoder.fc_norm`` when it never pools).
    - ``export_encoder = "name"``: the submodule that is the encoder to export and
      evaluate (default ``"encoder"``); checkpoints record it and ``load_encoder``
      / ``vitssl eval`` / the run summary use it (DINO exports its teacher).
    - ``export_pre_logits = "name"``: a ``Linear(D, D) + Tanh`` submodule that
      ``load_encoder`` attaches as ``encoder.pre_logits`` (``features=pre-logits``).
    """


@hookspec
def register_stems(register: Register) -> None:
    """Register patch stems.

    ``factory(image_size=, patch_size=, in_chans=, embed_dim=, **options)`` returns a
    module mapping images (B, 3, H, W) to tokens (B, N, D) that exposes ``grid_size``.
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluators: ``factory(**options)`` with ``.run(encoder, task) -> dict``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register built-in datasets: ``factory(split=..., **options) -> map-style dataset``."""
