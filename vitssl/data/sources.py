"""Open the labelled or unlabelled dataset a spec names."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from vitssl.data.spec import DataSpec, parse_spec
from vitssl.errors import VitsslError
from vitssl.plugins import get_registry


def open_dataset(spec: str | DataSpec, split: str = "train", **options: Any) -> Dataset:
    """A map-style dataset of ``(image, label)`` for a spec; ``label`` is -1 when unlabelled.

    ``image`` is a PIL image or a uint8 tensor (3, H, W). The spec's own split
    (``builtin:digits:test``) wins over ``split``.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    split = spec.split or split
    if spec.kind == "builtin":
        factory = get_registry().get("datasets", spec.target)
        return factory(split=split, **options)
    raise VitsslError(f"data spec kind '{spec.kind}:' is not supported for map-style "
                      f"datasets here; use builtin:NAME")


def num_classes(dataset: Dataset) -> int | None:
    """The dataset's class count, or None for unlabelled data."""
    return getattr(dataset, "num_classes", None)
