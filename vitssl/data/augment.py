"""Pretraining augmentation that keeps a dataset's labels true.

The spec's source decides (:meth:`vitssl.data.source.Source.augmentation`):
``builtin:`` datasets declare the augmentation their labels survive as a
class attribute ``augmentation`` (an :class:`Augmentation`), ``idx:`` data
gets none (digits and letters change under a mirror), and other data
(``folder:``, ``wds:``, ``vtab1k:``, a dataset without the attribute) gets
the ImageNet-style recipe. ``data.augment``, ``data.hflip``,
``data.crop_scale``, ``data.crop_ratio``, ``data.translate`` and ``data.color``
left unset (``None``) take the source's values; a value given explicitly wins.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from vitssl.config import DataConfig


@dataclass(frozen=True)
class Augmentation:
    """Random resized crop (scale, aspect ratio), shift and horizontal flip, or none.

    ``color`` says whether the self-supervised objectives' colour operations (jitter,
    greyscale, solarisation in :mod:`vitssl.data.views`) suit the data; the
    pretraining transform itself has none.
    """

    augment: bool = True
    hflip: bool = True
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: float = 0.0
    color: bool = True


IMAGENET_STYLE = Augmentation()


NONE = Augmentation(augment=False, hflip=False, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                    color=False)


def declared(factory: object) -> Augmentation:
    """The augmentation a dataset factory declares as ``augmentation``, or ImageNet-style."""
    own = getattr(factory, "augmentation", None)
    return own if isinstance(own, Augmentation) else IMAGENET_STYLE


def dataset_augmentation(spec: str) -> Augmentation:
    """The augmentation a spec's source gives its data by default."""
    from vitssl.data.spec import get_source, parse_spec

    parsed = parse_spec(spec)
    return get_source(parsed.kind).augmentation(parsed.target)


def resolve_augmentation(data: DataConfig) -> DataConfig:
    """``data`` with every unset augmentation key filled in from its source.

    A config with nothing unset is returned as it is (no lookup), so calling
    this again on a resolved config costs nothing.
    """
    unset = [f.name for f in fields(Augmentation) if getattr(data, f.name) is None]
    if not unset:
        return data
    own = dataset_augmentation(data.spec)
    return replace(data, **{name: getattr(own, name) for name in unset})
