"""``vitssl.Objective``: the whole objective contract, as one base class.

An objective is a subclass of :class:`Objective` (checked when its plugin
registers it), built by the loop as ``Cls(encoder=encoder, **options)``;
``forward(batch)`` returns ``{"loss": scalar tensor, **metrics}``. Everything
else is optional and has a no-op default here; the loop reads objectives only
through these methods. The encoder it gets is described by :class:`Encoder`;
the pieces objectives share (per-sample randomness, patches, masks, an EMA
teacher, collectives) live in :mod:`vitssl.ssl`.

The batch (a dict) holds ``"image"`` (B, C, H, W) normalised and ``"pixels"``
(the same in [0, 1]), ``"label"`` (B,) for labelled data, ``"sample_seed"``
(B,) a seed per sample fixed by its position in the run's sample stream
(whatever the rank or accumulation; a CPU tensor, read it on the host with
:func:`vitssl.ssl.batch.batch_seeds`), and ``"step"`` / ``"total_steps"`` (the
optimiser step being taken, from 0, and the run's length), so schedules are
pure functions of progress. With :meth:`Objective.views` it holds ``"views"``
(name -> (B, V, C, h, w) normalised) and ``"view_pixels"`` instead of
``"image"`` / ``"pixels"``.

Metrics are 0-d tensors (left on the device, read once per logging step) or
plain Python numbers computed on the host (a schedule's value). Never read a
device tensor on the host in ``forward`` (``.item()``, ``.tolist()``,
``int()``, ``float()``, ``bool()``, boolean-mask indexing): each waits for the
device on every step. Checks that need values go in :meth:`Objective.check_batch`.

State a resumed run needs (an EMA teacher, a centre, counters) lives in
parameters or registered buffers, so checkpoints hold it. Parameters with
``requires_grad=False`` stay out of the optimiser, clipping and gradient
sync; a trainable parameter that gets no gradient in the first step (a norm
the objective never uses) is frozen by the loop for the rest of the run.
Buffers are broadcast from rank 0 under DDP: keep per-rank running sums as
plain attributes and all-reduce them in a step hook.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from vitssl.errors import VitsslError

Views = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class DataInfo:
    """What is known about the pretraining data before a sample is read."""

    spec: str
    labelled: bool
    num_classes: int | None = None


class Encoder(Protocol):
    """What an objective may use of the encoder it is built around (a ViT, any stem).

    Token sequences are (B, T, D) with T = ``num_prefix_tokens`` + patches, patches
    row-major over the grid.
    """

    embed_dim: int  # D
    num_heads: int
    patch_size: int | tuple[int, int]  # an int for square patches
    grid_size: tuple[int, int]  # (rows, cols) at the configured image size
    num_prefix_tokens: int  # 1 with a class token, else 0
    patch_embed: nn.Module  # the stem: images -> patch tokens

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> pooled features (B, D) (``forward_head`` of the features)."""

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid of an image of this size."""

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> patch tokens (B, N, D), before position embeddings."""

    def encode(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
               grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Patch tokens (B, n, D) -> final-norm features (B, prefix + n, D); ``positions``
        (B, n): grid indices of a subset of the patches (MAE's visible ones)."""

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> final-norm features (B, T, D)."""

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, T, D) -> (B, D): the class token or the patch mean, per config."""

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, T, D) -> pooled features (B, D) after ``fc_norm``."""


class Objective(nn.Module):
    """Base class of pretraining objectives: subclass it and override what you need."""

    requires_labels: bool = False
    """The loop refuses unlabelled data for an objective that needs labels."""

    pos_embed: str = "learned"
    """The encoder's position embeddings under ``model.pos_embed=auto`` (the default):
    ``"learned"`` (the ViT's) or ``"sincos"`` (a fixed 2-D sin-cos table, as MAE's)."""

    @classmethod
    def options_from_data(cls, data: DataInfo) -> dict[str, Any]:
        """Factory options the data supplies (``{"num_classes": ...}``); the user's win."""
        return {}

    def views(self, size: tuple[int, int], data: Any) -> Views | None:
        """A transform of one image into named views, or None for the loop's single view.

        ``size`` is the model's (height, width); ``data`` the resolved data config (whether
        a flip and colour operations suit it: :func:`vitssl.ssl.views.data_allows`). The
        transform maps a PIL image or uint8 (C, H, W) tensor to ``{name: (V, C, h, w) uint8}``
        in the data workers, seeded per sample; raise :class:`VitsslError` to refuse a size.
        """
        return None

    def check_batch(self, batch: dict[str, Any]) -> None:
        """Check a batch on the host, before it moves to the device (raise :class:`VitsslError`).

        The place for checks that read values (label ranges): ``forward`` must not. It sees
        the batch as the data gives it, before ``sample_seed`` and the step are added.
        """

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        """After gradients are all-reduced, unscaled and clipped; once per optimiser step."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """After the optimiser step (an EMA teacher update); once per step, on every rank."""

    def exports(self) -> dict[str, str]:
        """The submodules evaluation uses, by role: ``{"encoder": NAME, FEATURE: NAME...}``.

        ``"encoder"`` is the encoder that is exported, evaluated and summarised
        (DINO's teacher). Every other role names a head that maps the encoder's
        pooled features to other features; :func:`vitssl.train.checkpoint.load_encoder`
        attaches it to the encoder under its role (``features=pre-logits`` reads
        ``encoder.pre_logits``). Checkpoints record this mapping.
        """
        return {"encoder": "encoder"}


def is_objective_class(factory: Any) -> bool:
    """Whether ``factory`` is an :class:`Objective` subclass (what registration accepts)."""
    return isinstance(factory, type) and issubclass(factory, Objective)


def objective_options(name: str, factory: type[Objective], options: Mapping[str, Any],
                      data: DataInfo) -> dict[str, Any]:
    """The options ``factory`` is built with: what the data supplies, then the user's.

    Refuses, in one line, unlabelled data for an objective that needs labels.
    """
    if factory.requires_labels and not data.labelled:
        raise VitsslError(f"objective '{name}' needs labels but '{data.spec}' is unlabelled; "
                          f"use a labelled spec such as builtin:digits")
    supplied = factory.options_from_data(data)
    return {**{k: v for k, v in supplied.items() if v is not None}, **options}


def build_objective(name: str, factory: type[Objective], encoder: nn.Module,
                    options: Mapping[str, Any]) -> Objective:
    """``factory(encoder=encoder, **options)``; options it does not take are refused in one
    line, before it runs."""
    try:
        inspect.signature(factory).bind(encoder=encoder, **options)
    except TypeError as exc:
        raise VitsslError(f"objective '{name}' does not accept options {dict(options)}: "
                          f"{exc}") from None
    return factory(encoder=encoder, **options)
