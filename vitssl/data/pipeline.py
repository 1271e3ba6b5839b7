"""The entry points the training loop uses: what the data is, and its pretraining batches.

:func:`data_info` says what the spec's source knows before a sample is read;
:func:`pretrain_batches` builds the one pipeline of a run. Map-style sources
(``builtin:``, ``idx:``, ``folder:``, ``vtab1k:``) give deterministic batches:
batch ``s`` is a pure function of (seed, s), so a resumed run sees exactly the
batches of an uninterrupted one (:mod:`vitssl.data.batches`). Streaming
sources (``wds:``) continue from the position a checkpoint saved
(:mod:`vitssl.data.streams`). Both batch kinds expose ``skipped``,
``resume_note``, ``labelled``, ``num_classes`` and ``stream_state()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from vitssl.config import DataConfig
from vitssl.data.augment import resolve_augmentation
from vitssl.data.batches import StepBatches, counted, step_loader
from vitssl.data.spec import get_source, parse_spec
from vitssl.data.streams import StreamBatches, stream_resume
from vitssl.data.transforms import pretrain_transform
from vitssl.objective import DataInfo

__all__ = ["PretrainBatches", "StreamBatches", "data_info", "pretrain_batches",
           "stream_resume"]


@dataclass
class PretrainBatches:
    """Iterable of batch dicts for steps ``start_step .. num_steps - 1`` on this rank.

    Each batch: ``"image"`` normalised float (B, 3, H, W), ``"pixels"`` the same
    images in [0, 1] before normalisation (or, with an objective's views,
    ``"views"`` and ``"view_pixels"``: name -> (B, V, 3, h, w)), and ``"label"``
    long (B,) when the data is labelled. ``skipped`` counts samples dropped as
    unreadable so far; ``num_classes`` is the dataset's class count (None when
    unlabelled). Map-style batches restart exactly from the step alone, so
    ``resume_note`` is None and :meth:`stream_state` has nothing to save.
    """

    batches: StepBatches
    start_step: int
    num_workers: int
    labelled: bool
    num_classes: int | None = None
    skipped: int = field(default=0)
    resume_note: str | None = None

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start_step)

    def stream_state(self) -> dict[str, Any] | None:
        """None: batches are a pure function of the step, no stream position to save."""
        return None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        loader = step_loader(self.batches, self.start_step, self.num_workers)
        return counted(loader, self, self.batches.mean, self.batches.std)


def data_info(cfg: DataConfig) -> DataInfo:
    """What the spec's source knows before the pipeline is built: labelled? class count?

    ``wds:`` reads its first sample; the answer is remembered, so the
    pipeline built next does not open the first shard again.
    """
    spec = parse_spec(cfg.spec)
    labelled, classes = get_source(spec.kind).info(spec.target, spec.split or cfg.split,
                                                   cfg.options)
    return DataInfo(cfg.spec, labelled, classes)


def pretrain_batches(cfg: DataConfig, *, image_size: int | tuple[int, int], batch_size: int,
                     seed: int, num_steps: int, start_step: int = 0, rank: int = 0,
                     world_size: int = 1, views: Callable | None = None,
                     stream_state: dict[str, Any] | None = None,
                     ) -> PretrainBatches | StreamBatches:
    """Batches for pretraining; ``batch_size`` is per rank (global = batch_size * world_size).

    ``cfg`` is normally resolved already (:func:`~vitssl.data.augment.resolve_augmentation`,
    once per run); augmentation keys still unset take the source's values.
    ``views`` (an objective's multi-view transform) replaces the single
    augmented view: batches then hold ``"views"`` / ``"view_pixels"`` instead
    of ``"image"`` / ``"pixels"``. ``stream_state`` (streams only): the
    positions a checkpoint saved, ``{"world_size": N, "ranks": [state, ...]}``.
    """
    cfg = resolve_augmentation(cfg)  # returns cfg itself when nothing is unset
    transform = views or pretrain_transform(image_size, cfg.crop_scale, cfg.hflip, cfg.augment,
                                            cfg.crop_ratio, cfg.translate, as_uint8=True)
    spec = parse_spec(cfg.spec)
    source = get_source(spec.kind)
    if source.streams:
        return source.stream(spec.target, transform=transform, batch_size=batch_size,
                             seed=seed, data=cfg, rank=rank, world_size=world_size,
                             start_step=start_step, num_batches=max(0, num_steps - start_step),
                             stream_state=stream_state)
    dataset = source.open(spec.target, spec.split or cfg.split, cfg.options)
    batches = StepBatches(dataset, transform, batch_size=batch_size, seed=seed, mean=cfg.mean,
                          std=cfg.std, rank=rank, world_size=world_size, num_steps=num_steps,
                          on_error=cfg.on_error, seed_per_sample=views is not None)
    classes = getattr(dataset, "num_classes", None)
    return PretrainBatches(batches, start_step, cfg.num_workers, bool(classes), classes)
