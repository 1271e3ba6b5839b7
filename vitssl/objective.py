"""``vitssl.Objective``: the whole objective contract, as one base class.

An objective is an ``nn.Module`` built by its factory as
``factory(encoder=encoder, **options)``; ``forward(batch)`` returns
``{"loss": scalar tensor, **metrics}``. Everything else is optional and has a
no-op default here; the pretraining loop reads objectives only through these
methods (:func:`as_objective` adapts plain ``nn.Module`` objectives written
against the attribute contract that came before this class, in place).

The batch (a dict) holds ``"image"`` (B, 3, H, W) normalised and ``"pixels"``
(the same in [0, 1]), ``"label"`` (B,) for labelled data, ``"sample_seed"``
(B,) a seed per sample fixed by its position in the run's sample stream
(whatever the rank or accumulation), and ``"step"`` / ``"total_steps"`` (the
optimiser step being taken, from 0, and the run's length), so schedules are
pure functions of progress. With :meth:`Objective.views` it holds ``"views"``
(name -> (B, V, 3, h, w) normalised) and ``"view_pixels"`` instead of
``"image"`` / ``"pixels"``.

Metrics are 0-d tensors (left on the device, read once per logging step) or
plain Python numbers computed on the host (a schedule's value). Never call
``.item()`` / ``float()`` on a device tensor in ``forward``: it waits for the
device on every step.

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
from typing import Any

from torch import nn

from vitssl.errors import VitsslError

Views = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class DataInfo:
    """What is known about the pretraining data before a sample is read."""

    spec: str
    labelled: bool
    num_classes: int | None = None


class Objective(nn.Module):
    """Base class of pretraining objectives: subclass it and override what you need."""

    requires_labels: bool = False
    """The loop refuses unlabelled data for an objective that needs labels."""

    pos_embed: str = "learned"
    """The encoder's position embeddings under ``model.pos_embed=auto`` (the default):
    ``"learned"`` (the ViT's) or ``"sincos"`` (a fixed 2-D sin-cos table, as MAE's)."""

    @classmethod
    def options_from_data(cls, data: DataInfo) -> dict[str, Any]:
        """Factory options the data supplies (e.g. ``{"num_classes": data.num_classes}``).

        Called before the objective is built; options the user set win.
        """
        return {}

    def views(self, size: tuple[int, int], data: Any) -> Views | None:
        """A transform of one image into named views, or None for the loop's single view.

        ``size`` is the model's (height, width); ``data`` the resolved data config
        (``data.hflip`` and ``data.color``: whether a flip and colour operations suit
        the data; :func:`vitssl.data.views.data_allows`). The transform maps a PIL image
        or uint8 (3, H, W) tensor to ``{name: (V, 3, h, w) uint8 tensor}``; it runs in
        the data workers, seeded per sample. Raise :class:`VitsslError` to refuse a
        size the views cannot be made at (e.g. a non-square one).
        """
        return None

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


class LegacyObjective(Objective):
    """The older attribute contract of a plain ``nn.Module`` objective, read through the base.

    :func:`build_objective` mixes it into such an objective's class, so the
    module keeps its state-dict keys and its own ``forward``.
    """

    _legacy_class: type = nn.Module

    def _own(self, name: str) -> Any:
        return getattr(self._legacy_class, name, None)

    def views(self, size: tuple[int, int], data: Any) -> Views | None:
        declared = self._own("views")
        if not callable(declared):
            return None
        height, width = size  # the older contract passed an int for square sizes
        return declared(self, height if height == width else size, data)

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        hook = self._own("before_optimizer_step")
        if callable(hook):
            hook(self, step, total_steps)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        hook = self._own("after_optimizer_step")
        if callable(hook):
            hook(self, step, total_steps)

    def exports(self) -> dict[str, str]:
        out = {"encoder": str(getattr(self, "export_encoder", "encoder"))}
        pre_logits = getattr(self, "export_pre_logits", None)
        if pre_logits:
            out["pre_logits"] = str(pre_logits)
        return out


_adapted: dict[type, type] = {}


def as_objective(module: nn.Module) -> Objective:
    """``module`` itself, as an :class:`Objective` (older plain modules are adapted in place)."""
    if isinstance(module, Objective):
        return module
    cls = type(module)
    if cls not in _adapted:
        _adapted[cls] = type(cls.__name__, (LegacyObjective, cls), {
            "_legacy_class": cls, "__module__": cls.__module__,
            "requires_labels": bool(getattr(cls, "requires_labels", False))})
    module.__class__ = _adapted[cls]
    return module


def _legacy_options(factory: Callable[..., Any], data: DataInfo) -> dict[str, Any]:
    """The older contract's data options: ``num_classes`` to factories that take it."""
    try:
        accepts = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {"num_classes": data.num_classes} if "num_classes" in accepts and \
        data.num_classes else {}


def _is_objective_class(factory: Any) -> bool:
    return isinstance(factory, type) and issubclass(factory, Objective)


def objective_options(name: str, factory: Callable[..., Any], options: Mapping[str, Any],
                      data: DataInfo) -> dict[str, Any]:
    """The options ``factory`` is built with: what the data supplies, then the user's.

    Refuses, in one line, unlabelled data for an objective that needs labels.
    """
    native = _is_objective_class(factory)
    needs_labels = factory.requires_labels if native else \
        bool(getattr(factory, "requires_labels", False))
    if needs_labels and not data.labelled:
        raise VitsslError(f"objective '{name}' needs labels but '{data.spec}' is unlabelled; "
                          f"use a labelled spec such as builtin:digits")
    supplied = factory.options_from_data(data) if native else _legacy_options(factory, data)
    return {**{k: v for k, v in supplied.items() if v is not None}, **options}


def build_objective(name: str, factory: Callable[..., Any], encoder: nn.Module,
                    options: Mapping[str, Any]) -> Objective:
    """``factory(encoder=encoder, **options)`` as an :class:`Objective`.

    Options the factory does not take are refused in one line, before it runs.
    """
    try:
        inspect.signature(factory).bind(encoder=encoder, **options)
    except TypeError as exc:
        raise VitsslError(f"objective '{name}' does not accept options {dict(options)}: "
                          f"{exc}") from None
    except ValueError:  # no signature to check (a builtin or C callable)
        pass
    return as_objective(factory(encoder=encoder, **options))
