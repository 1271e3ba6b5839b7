"""The entry points the training loop uses: what the data is, and its pretraining batches.

:func:`data_info` says what the spec's source knows before a sample is read;
:func:`pretrain_batches` builds the one pipeline of a run. Map-style sources
(``builtin:``, ``idx:``, ``folder:``, ``vtab1k:``) give deterministic batches:
batch ``s`` is a pure function of (seed, s), so a resumed run sees exactly the
batches of an uninterrupted one (:mod:`vitssl.data.batches`). Streaming
sources (``wds:``) continue from the position a checkpoint saved
(:mod:`vitssl.data.streams`). Both batch kinds expose ``skipped``,
``resume_note``, ``labelled``, ``num_classes``, ``num_workers`` (resolved by
:func:`resolve_num_workers`) and ``stream_state()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from vitssl.config import DataConfig
from vitssl.data.augment import resolve_augmentation
from vitssl.data.batches import StepBatches, counted, step_loader
from vitssl.data.checks import check_num_workers
from vitssl.data.spec import get_source, parse_spec
from vitssl.data.streams import StreamBatches, stream_resume
from vitssl.data.transforms import pretrain_transform
from vitssl.devices import local_ranks, usable_cores
from vitssl.objective import DataInfo

__all__ = ["PretrainBatches", "StreamBatches", "data_info", "pretrain_batches",
           "resolve_num_workers", "stream_resume"]

# Sources whose samples are arrays already in memory: nothing to decode, so
# "auto" loads them in the main process (benchmarks/RESULTS.md, "Data loading").
IN_MEMORY_SOURCES = ("builtin", "idx")
# The most workers "auto" starts per rank: past it each adds start-up time and memory
# (a copy of the file list) for a rate one rank's step rarely needs.
MAX_AUTO_WORKERS = 16


def resolve_num_workers(setting: int | str, source: str, *, cores: int, ranks: int = 1) -> int:
    """The DataLoader worker count for ``data.num_workers`` (``"auto"`` or a count).

    A count is used as it is. ``"auto"``:

    - 0 for sources held in memory (:data:`IN_MEMORY_SOURCES`: ``builtin:``,
      ``idx:``): their pipeline alone runs about 10x faster than the default
      run's step, so a worker could hide at most a tenth of a step and only
      competes with it for the cores (measured on 2 cores,
      ``benchmarks/dataloader.py --pipeline``: digits and Fashion-MNIST fed
      the loop within 3 % with 0, 1 or 2 workers);
    - for sources that decode files (``folder:``, ``vtab1k:``, ``wds:``, any
      other): the ``cores`` this process may use, split over the ``ranks`` on
      the machine, less one per rank for the training loop, at most
      :data:`MAX_AUTO_WORKERS` (0 with a single core per rank). Workers hide
      decoding wherever the step leaves cores idle (a GPU run; on 2 cores
      with sleeping OpenMP waits, a folder of PNGs fed ``mae`` at 216 images/s
      with 0 workers and 251-279 with 1-2); a CPU step whose OpenMP threads
      spin (the default) holds every core, and there they measured neutral.

    Batches do not depend on the count (workers only build them in parallel).
    """
    check_num_workers(setting)
    if setting != "auto":
        return int(setting)
    if source in IN_MEMORY_SOURCES:
        return 0
    return min(MAX_AUTO_WORKERS, max(0, cores // max(1, ranks) - 1))


def describe_workers(cfg: DataConfig, resolved: int, world_size: int = 1) -> str:
    """One line saying how a run loads its data and why (logged at its start)."""
    how = f"{resolved} loader worker{'s' if resolved != 1 else ''}" if resolved \
        else "loaded in the main process"
    if cfg.num_workers != "auto":
        return f"data: {how} (data.num_workers={cfg.num_workers})"
    kind = parse_spec(cfg.spec).kind
    cores, ranks = usable_cores(), local_ranks(world_size)
    if resolved != resolve_num_workers("auto", kind, cores=cores, ranks=ranks):
        why = "the count the checkpoint's stream position was saved with"
    elif kind in IN_MEMORY_SOURCES:
        why = f"{kind}: data is held in memory"
    else:
        why = (f"{cores} usable core{'s' if cores != 1 else ''} for {ranks} "
               f"rank{'s' if ranks != 1 else ''}, one kept per rank for training")
    return f"data: {how} (data.num_workers=auto: {why})"


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
    device: torch.device | None = None  # CUDA: pinned batches, finished on the device
    _loader: DataLoader | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start_step)

    def stream_state(self) -> dict[str, Any] | None:
        """None: batches are a pure function of the step, no stream position to save."""
        return None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cuda = self.device is not None and self.device.type == "cuda"
        if self._loader is None:  # one loader, so persistent workers are reused
            self._loader = step_loader(self.batches, self.start_step, self.num_workers,
                                       pin_memory=cuda)
        return counted(iter(self._loader), self, self.batches.mean, self.batches.std,
                       device=self.device if cuda else None)


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
                     device: torch.device | str | None = None,
                     ) -> PretrainBatches | StreamBatches:
    """Batches for pretraining; ``batch_size`` is per rank (global = batch_size * world_size).

    ``cfg`` is normally resolved already (:func:`~vitssl.data.augment.resolve_augmentation`,
    once per run); augmentation keys still unset take the source's values.
    ``views`` (an objective's multi-view transform) replaces the single
    augmented view: batches then hold ``"views"`` / ``"view_pixels"`` instead
    of ``"image"`` / ``"pixels"``. ``stream_state`` (streams only): the
    positions a checkpoint saved, ``{"world_size": N, "ranks": [state, ...]}``.
    ``data.num_workers`` is resolved here (:func:`resolve_num_workers`); a
    stream resumed with ``"auto"`` keeps the count its saved position was
    written with, so it continues exactly. ``device``: on CUDA, map-style
    batches come through pinned memory and are finished on the device.
    """
    cfg = resolve_augmentation(cfg)  # returns cfg itself when nothing is unset
    transform = views or pretrain_transform(image_size, cfg.crop_scale, cfg.hflip, cfg.augment,
                                            cfg.crop_ratio, cfg.translate, as_uint8=True)
    spec = parse_spec(cfg.spec)
    source = get_source(spec.kind)
    workers = resolve_num_workers(cfg.num_workers, spec.kind, cores=usable_cores(),
                                  ranks=local_ranks(world_size))
    if source.streams:
        saved = stream_state if cfg.num_workers == "auto" and stream_state else None
        if saved and int(saved["world_size"]) == world_size and saved["ranks"][rank]:
            workers = int(saved["ranks"][rank]["num_workers"])
        cfg = replace(cfg, num_workers=workers)
        return source.stream(spec.target, transform=transform, batch_size=batch_size,
                             seed=seed, data=cfg, rank=rank, world_size=world_size,
                             start_step=start_step, num_batches=max(0, num_steps - start_step),
                             stream_state=stream_state)
    dataset = source.open(spec.target, spec.split or cfg.split, cfg.options)
    batches = StepBatches(dataset, transform, batch_size=batch_size, seed=seed, mean=cfg.mean,
                          std=cfg.std, rank=rank, world_size=world_size, num_steps=num_steps,
                          on_error=cfg.on_error, seed_per_sample=views is not None)
    classes = getattr(dataset, "num_classes", None)
    return PretrainBatches(batches, start_step, workers, bool(classes), classes,
                           device=torch.device(device) if device is not None else None)
