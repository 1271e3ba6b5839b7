"""Pretraining augmentation that keeps a dataset's labels true.

Each built-in dataset declares the augmentation its labels survive as a class
attribute ``augmentation`` (an :class:`Augmentation`); any other data
(``folder:``, ``wds:``, ``vtab1k:``, a dataset without the attribute) gets
the ImageNet-style recipe. ``data.augment``, ``data.hflip``,
``data.crop_scale``, ``data.crop_ratio`` and ``data.translate`` left unset
(``None``) take the dataset's values; a value given explicitly wins.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from vitssl.config import DataConfig
from vitssl.data.spec import parse_spec


@dataclass(frozen=True)
class Augmentation:
    """Random resized crop (scale, aspect ratio), shift and horizontal flip, or none."""

    augment: bool = True
    hflip: bool = True
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: float = 0.0


IMAGENET_STYLE = Augmentation()


def dataset_augmentation(spec: str) -> Augmentation:
    """The augmentation a spec's dataset declares, or :data:`IMAGENET_STYLE`."""
    parsed = parse_spec(spec)
    if parsed.kind != "builtin":
        return IMAGENET_STYLE
    from vitssl.plugins import get_registry

    factory = get_registry().get("datasets", parsed.target)
    declared = getattr(factory, "augmentation", None)
    return declared if isinstance(declared, Augmentation) else IMAGENET_STYLE


def resolve_augmentation(data: DataConfig) -> DataConfig:
    """``data`` with every unset augmentation key filled in from its dataset."""
    unset = [f.name for f in fields(Augmentation) if getattr(data, f.name) is None]
    if not unset:
        return data
    own = dataset_augmentation(data.spec)
    return replace(data, **{name: getattr(own, name) for name in unset})
