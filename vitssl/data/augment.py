"""Pretraining augmentation that keeps a dataset's labels true.

The spec's source decides (:meth:`vitssl.data.source.Source.augmentation`;
``builtin:`` datasets declare theirs as a class attribute ``augmentation``).
The augmentation keys of ``data`` left unset (``None``) take the source's
values; a value given explicitly wins.
"""

from __future__ import annotations

from dataclasses import fields, replace

from vitssl.config import DataConfig
from vitssl.data.source import IMAGENET_STYLE, Augmentation, parse_spec

__all__ = ["IMAGENET_STYLE", "NONE", "Augmentation", "dataset_augmentation",
           "resolve_augmentation"]

NONE = Augmentation(augment=False, hflip=False, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                    color=False)


def dataset_augmentation(spec: str) -> Augmentation:
    """The augmentation a spec's source gives its data by default."""
    parsed = parse_spec(spec)
    return parsed.source.augmentation(parsed.target)


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
