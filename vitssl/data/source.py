"""The data-source contract: what a spec kind (``KIND:TARGET[:SPLIT]``) provides.

A source plugin registers a :class:`Source` subclass under its spec prefix::

    @vitssl.hookimpl
    def register_sources(register):
        register("npz", NpzSource)     # specs "npz:PATH[:SPLIT]"

The data package reads sources only through these methods: it parses a spec
with :meth:`Source.parse`, asks :meth:`Source.augmentation` for the default
augmentation, :meth:`Source.info` for what is known before reading, and
:meth:`Source.open` (map-style) or :meth:`Source.stream` (endless streams)
for the data itself. ``options`` is ``data.options`` (a dict, maybe empty).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import Dataset

from vitssl.data.augment import IMAGENET_STYLE, Augmentation
from vitssl.errors import VitsslError

# Split names a trailing ``:SPLIT`` of a spec may carry.
SPLITS = ("train", "val", "test", "train800", "val200", "train800val200")


class Source:
    """Base class of data sources; subclasses override what differs from map-style data."""

    example: str = ""
    """A spec to show in error messages and listings, e.g. ``"folder:PATH"``."""

    streams: bool = False
    """True for endless streams (:meth:`stream`); False for map-style data (:meth:`open`)."""

    def parse(self, rest: str) -> tuple[str, str | None]:
        """The text after ``KIND:`` -> (target, split); a trailing ``:SPLIT`` is split off."""
        head, colon, tail = rest.rpartition(":")
        if colon and tail in SPLITS and head:
            return head, tail
        return rest, None

    def augmentation(self, target: str) -> Augmentation:
        """The pretraining augmentation the data's labels survive (default: ImageNet-style)."""
        return IMAGENET_STYLE

    def info(self, target: str, split: str, options: Mapping[str, Any]) -> tuple[bool, int | None]:
        """(labelled, class count or None) before the pipeline is built; opens by default."""
        classes = getattr(self.open(target, split, options), "num_classes", None)
        return bool(classes), classes

    def open(self, target: str, split: str, options: Mapping[str, Any]) -> Dataset:
        """A map-style dataset of ``(image, label)``; label -1 when unlabelled.

        ``image`` is a PIL image or a uint8 tensor (3, H, W); the dataset's
        ``num_classes`` is its class count (None when unlabelled).
        """
        raise VitsslError(f"{self.example or 'this source'} is a stream, not a map-style "
                          f"dataset; use it for pretraining")

    def stream(self, target: str, *, transform: Callable, batch_size: int, seed: int,
               data: Any, rank: int, world_size: int, start_step: int, num_batches: int,
               stream_state: dict[str, Any] | None) -> Any:
        """A :class:`~vitssl.data.pipeline.StreamBatches` of ``num_batches`` batches.

        ``data`` is the resolved :class:`~vitssl.config.DataConfig`;
        ``stream_state`` what :meth:`StreamBatches.stream_state` saved.
        """
        raise VitsslError(f"{self.example or 'this source'} is map-style; it does not stream")


def check_options(kind: str, options: Mapping[str, Any],
                  accepted: tuple[str, ...] = ()) -> dict[str, Any]:
    """``options`` as a dict; one line refusing any a source does not take."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"accepted: {', '.join(accepted)}" if accepted else "it takes none"
        raise VitsslError(f"{kind}: unknown data.options {unknown}; {takes}")
    return dict(options)
