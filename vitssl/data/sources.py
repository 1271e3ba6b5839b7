"""Open the labelled or unlabelled dataset a spec names."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from vitssl.data.spec import DataSpec, parse_spec
from vitssl.errors import VitsslError
from vitssl.plugins import get_registry


def open_dataset(spec: str | DataSpec, split: str = "train", **options: Any) -> Dataset:
    """A map-style dataset of ``(image, label)`` for a spec; ``label`` is -1 when unlabelled.

    ``image`` is a PIL image or a uint8 tensor (3, H, W); ``.num_classes`` is
    None for unlabelled data. The spec's own split (``builtin:digits:test``)
    wins over ``split``. Kinds: ``builtin:NAME`` (``options`` go to the
    dataset's factory), ``folder:PATH`` (see :mod:`vitssl.data.folder`) and
    ``vtab1k:PATH/TASK`` (``train`` = train800val200, ``val`` = val200; see
    :mod:`vitssl.data.vtab1k`). ``wds:`` shards are streams: use
    :func:`vitssl.data.pipeline.pretrain_batches`.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    split = spec.split or split
    if spec.kind == "builtin":
        factory = get_registry().get("datasets", spec.target)
        if not options:
            return factory(split=split)
        try:
            return factory(split=split, **options)
        except TypeError as exc:
            raise VitsslError(f"builtin:{spec.target}: bad options {options}: {exc}") from None
    if spec.kind == "folder":
        from vitssl.data.folder import ImageFolder

        return ImageFolder(spec.target, split, **options)
    if spec.kind == "vtab1k":
        from vitssl.data.vtab1k import Vtab1kTask

        return Vtab1kTask(spec.target, split, **options)
    raise VitsslError(f"'{spec}' is a stream of webdataset shards, not a map-style dataset; "
                      f"use it for pretraining, or use builtin:, folder: or vtab1k: here")


def num_classes(dataset: Dataset) -> int | None:
    """The dataset's class count, or None for unlabelled data."""
    return getattr(dataset, "num_classes", None)
