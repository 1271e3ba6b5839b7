"""Data sources: what a spec kind (``KIND:TARGET[:SPLIT]``) provides, and specs parsed by it.

A source plugin registers a :class:`Source` subclass under its spec prefix
(``register("npz", NpzSource)`` in ``register_sources``). The core reads
sources only through that class; ``options`` is ``data.options`` (a dict).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from torch.utils.data import Dataset

from vitssl.config import DataConfig
from vitssl.data.bands import RGB, ImageFormat, format_of
from vitssl.errors import VitsslError
from vitssl.plugins import get_registry

# Split names a trailing ``:SPLIT`` of a spec may carry.
SPLITS = ("train", "val", "test", "train800", "val200", "train800val200")


@dataclass(frozen=True)
class Augmentation:
    """Random resized crop (scale, aspect ratio), shift and horizontal flip, or none.

    ``color``: whether the colour operations of :mod:`vitssl.ssl.views` suit the data.
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


class Batches(Protocol):
    """A run's pretraining batches, map-style or streamed: ``len()`` batch dicts.

    ``skipped``: samples dropped as unreadable so far; ``resume_note``: how a
    resumed stream restarted when not exactly; :meth:`stream_state`: what a
    checkpoint saves to continue (None: batches follow from the step).
    """

    labelled: bool
    num_classes: int | None
    num_workers: int
    skipped: int
    resume_note: str | None

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def stream_state(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class StreamRequest:
    """What the loop asks a stream for: rank ``rank``'s next ``num_batches`` batches.

    ``transform`` maps an image to what :func:`~vitssl.data.batches.stack_outputs`
    stacks; ``stream_state`` is what :meth:`Batches.stream_state` saved, as
    ``{"world_size": N, "ranks": [...]}``.
    """

    data: DataConfig
    transform: Callable
    batch_size: int  # per rank
    seed: int
    num_batches: int
    num_workers: int = 0
    start_step: int = 0
    rank: int = 0
    world_size: int = 1
    stream_state: dict[str, Any] | None = None


class Source:
    """Base class of data sources; subclasses override what differs from map-style data."""

    example: str = ""  # a spec for error messages and listings, e.g. "folder:PATH"
    streams: bool = False  # endless streams (stream), not map-style data (open)
    in_memory: bool = False  # samples are arrays in memory: no loader workers by default

    def parse(self, rest: str) -> tuple[str, str | None]:
        """The text after ``KIND:`` -> (target, split); a trailing ``:SPLIT`` is split off."""
        head, colon, tail = rest.rpartition(":")
        if colon and tail in SPLITS and head:
            return head, tail
        return rest, None

    def augmentation(self, target: str) -> Augmentation:
        """The pretraining augmentation the data's labels survive (default: ImageNet-style).

        Unset (``None``) augmentation keys of ``data`` take these values
        (:func:`resolve_augmentation`); a value given explicitly wins.
        """
        return IMAGENET_STYLE

    def info(self, target: str, split: str, options: Mapping[str, Any]) -> tuple[bool, int | None]:
        """(labelled, class count or None) before the pipeline is built; opens by default."""
        classes = getattr(self.open(target, split, options), "num_classes", None)
        return bool(classes), classes

    def image_format(self, target: str, split: str, options: Mapping[str, Any]) -> ImageFormat:
        """What the images hold: channels as decoded, bits per sample, colour operations.

        By default: 8-bit RGB for streams (and for no images: opening says so), else what the
        dataset's first image holds.
        """
        dataset = None if self.streams else self.open(target, split, options)
        if not dataset:
            return RGB
        own = getattr(dataset, "image_format", None)
        return own() if own is not None else format_of(dataset[0][0])

    def native_splits(self, target: str) -> bool:
        """Whether the data has the VTAB protocol's own splits (train800, val200, test)."""
        return False

    def open(self, target: str, split: str, options: Mapping[str, Any]) -> Dataset:
        """A map-style dataset of ``(image, label)``; label -1 when unlabelled.

        ``image`` is a PIL image, a uint8 tensor (3, H, W) or bands, a float
        tensor (C, H, W) (:mod:`vitssl.data.bands`); the dataset's
        ``num_classes`` is its class count (None when unlabelled).
        """
        raise VitsslError(f"{self.example or 'this source'} is a stream, not a map-style "
                          f"dataset; use it for pretraining")

    def stream(self, target: str, request: StreamRequest) -> Batches:
        """The batches ``request`` asks for, from an endless stream."""
        raise VitsslError(f"{self.example or 'this source'} is map-style; it does not stream")

    def samples(self, target: str, skips: Any) -> Iterator[dict[str, Any]]:
        """A stream's samples as webdataset members (``vitssl shard``); ``skips``: a SkipLog."""
        raise VitsslError(f"{self.example or 'this source'} cannot be written to shards")


def check_options(kind: str, options: Mapping[str, Any],
                  accepted: tuple[str, ...] = ()) -> dict[str, Any]:
    """``options`` as a dict; one line refusing any a source does not take."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"accepted: {', '.join(accepted)}" if accepted else "it takes none"
        raise VitsslError(f"{kind}: unknown data.options {unknown}; {takes}")
    return dict(options)


@dataclass(frozen=True)
class DataSpec:
    """``kind`` names a registered source; ``target`` a dataset name, path or URL pattern."""

    kind: str
    target: str
    split: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" + (f":{self.split}" if self.split else "")

    @property
    def source(self) -> Source:
        """The registered source of this spec's kind."""
        return get_source(self.kind)


def get_source(kind: str) -> Source:
    """The registered source for a spec prefix."""
    factory = get_registry().get("sources", kind)
    return factory() if isinstance(factory, type) else factory


def parse_spec(spec: str | DataSpec) -> DataSpec:
    """``"builtin:digits"``, ``"folder:/data/imgs"``, ``"vtab1k:/data/vtab-1k/dtd:test"``...

    The registered source for KIND splits the rest into a target and an
    optional trailing ``:SPLIT`` (``wds:`` never does: URLs hold colons).
    """
    if isinstance(spec, DataSpec):
        return spec
    kind, sep, rest = str(spec).partition(":")
    entries = get_registry().entries["sources"]
    if not sep or not rest or kind not in entries:
        shown = ", ".join(getattr(e.factory, "example", "") or f"{name}:..."
                          for name, e in sorted(entries.items()))
        raise VitsslError(f"bad data spec '{spec}': expected one of "
                          f"{shown or 'none (no source plugin is loaded: see VITSSL_PLUGINS)'}")
    target, split = get_source(kind).parse(rest)
    return DataSpec(kind, target, split)


def open_dataset(spec: str | DataSpec, split: str = "train", **options: Any) -> Dataset:
    """A map-style dataset of ``(image, label)`` for a spec (see :meth:`Source.open`).

    The spec's own split (``builtin:digits:test``) wins over ``split``;
    ``options`` (``data.options``) go to the source.
    """
    spec = parse_spec(spec)
    split = spec.split or split
    dataset = spec.source.open(spec.target, split, options)
    if len(dataset) == 0:
        raise VitsslError(f"data '{spec.kind}:{spec.target}' holds no images in split '{split}'")
    return dataset


def dataset_augmentation(spec: str) -> Augmentation:
    """The augmentation a spec's source gives its data by default."""
    parsed = parse_spec(spec)
    return parsed.source.augmentation(parsed.target)


def resolve_augmentation(data: DataConfig) -> DataConfig:
    """``data`` with every unset augmentation key filled in from its source (itself if none)."""
    unset = [f.name for f in fields(Augmentation) if getattr(data, f.name) is None]
    if not unset:
        return data
    own = dataset_augmentation(data.spec)
    return replace(data, **{name: getattr(own, name) for name in unset})
