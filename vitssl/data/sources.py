"""Open the labelled or unlabelled dataset a spec names, through its source plugin."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from vitssl.data.spec import DataSpec, get_source, parse_spec


def open_dataset(spec: str | DataSpec, split: str = "train", **options: Any) -> Dataset:
    """A map-style dataset of ``(image, label)`` for a spec; ``label`` is -1 when unlabelled.

    ``image`` is a PIL image or a uint8 tensor (3, H, W); ``.num_classes`` is
    None for unlabelled data. The spec's own split (``builtin:digits:test``)
    wins over ``split``; ``options`` (``data.options``) go to the source's
    opener (``builtin:``: the dataset's factory). Streams (``wds:``) refuse:
    use :func:`vitssl.data.pipeline.pretrain_batches`.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    return get_source(spec.kind).open(spec.target, spec.split or split, options)


def num_classes(dataset: Dataset) -> int | None:
    """The dataset's class count, or None for unlabelled data."""
    return getattr(dataset, "num_classes", None)
