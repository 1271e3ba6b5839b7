"""What the training loop asks of the data: its settings checked, what it is, its batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from vitssl.config import DataConfig, normalisation
from vitssl.data.bands import Bands
from vitssl.data.batches import StepBatches, counted, loader_options
from vitssl.data.channels import check_statistics
from vitssl.data.source import (
    Batches,
    StreamRequest,
    open_dataset,
    parse_spec,
    resolve_augmentation,
)
from vitssl.data.transforms import pretrain_transform
from vitssl.devices import local_ranks, usable_cores
from vitssl.errors import VitsslError
from vitssl.objective import DataInfo

# The most workers "auto" starts per rank: past it each adds start-up time and memory
# (a copy of the file list) for a rate one rank's step rarely needs.
MAX_AUTO_WORKERS = 16


def check_num_workers(value: Any) -> None:
    """Refuse a ``data.num_workers`` that is neither ``"auto"`` nor a count >= 0."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                           and value >= 0):
        return
    raise VitsslError(f"data.num_workers must be 'auto' or a whole number >= 0 (0 loads in "
                      f"the main process), got {value!r}")


def validate_data_config(dc: DataConfig) -> None:
    """Refuse, in one line, data settings no pipeline can use (unset augmentation keys pass)."""
    check_num_workers(dc.num_workers)
    if dc.crop_scale is not None:
        lo, hi = dc.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise VitsslError(f"data.crop_scale must satisfy 0 < low <= high <= 1, "
                              f"got {[lo, hi]}")
    if dc.crop_ratio is not None:
        lo, hi = dc.crop_ratio
        if not 0.0 < lo <= hi:
            raise VitsslError(f"data.crop_ratio must satisfy 0 < low <= high, got {[lo, hi]}")
    check_statistics(dc)
    if not isinstance(dc.options, dict):
        raise VitsslError(f"data.options must be a mapping of option names to values, "
                          f"got {dc.options!r}")


def resolve_num_workers(setting: int | str, *, in_memory: bool, cores: int,
                        ranks: int = 1) -> int:
    """The DataLoader worker count for ``data.num_workers`` (``"auto"`` or a count).

    ``"auto"``: 0 for data held in memory (``Source.in_memory``: a worker would
    only compete for the cores), else the ``cores`` this process may use split
    over the ``ranks`` on the machine, less one per rank for the loop, at most
    :data:`MAX_AUTO_WORKERS` (benchmarks/RESULTS.md, "Data loading"). Batches
    do not depend on the count.
    """
    check_num_workers(setting)
    if setting != "auto":
        return int(setting)
    if in_memory:
        return 0
    return min(MAX_AUTO_WORKERS, max(0, cores // max(1, ranks) - 1))


def describe_workers(cfg: DataConfig, resolved: int, world_size: int = 1) -> str:
    """One line saying how a run loads its data and why (logged at its start)."""
    how = f"{resolved} loader worker{'s' if resolved != 1 else ''}" if resolved \
        else "loaded in the main process"
    if cfg.num_workers != "auto":
        return f"data: {how} (data.num_workers={cfg.num_workers})"
    spec = parse_spec(cfg.spec)
    in_memory = spec.source.in_memory
    cores, ranks = usable_cores(), local_ranks(world_size)
    if resolved != resolve_num_workers("auto", in_memory=in_memory, cores=cores, ranks=ranks):
        why = "the count the checkpoint's stream position was saved with"
    elif in_memory:
        why = f"{spec.kind}: data is held in memory"
    else:
        why = (f"{cores} usable core{'s' if cores != 1 else ''} for {ranks} "
               f"rank{'s' if ranks != 1 else ''}, one kept per rank for training")
    return f"data: {how} (data.num_workers=auto: {why})"


@dataclass
class PretrainBatches:
    """:class:`~vitssl.data.source.Batches` for steps ``start_step .. num_steps - 1`` on this rank.

    Each batch: ``"image"`` normalised float (B, C, H, W), ``"pixels"`` the same
    images in [0, 1] (or, with an objective's views, ``"views"`` and
    ``"view_pixels"``: name -> (B, V, C, h, w)), and ``"label"`` long (B,) when
    the data is labelled. They restart exactly from the step alone.
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
            self._loader = DataLoader(self.batches, batch_size=None,
                                      sampler=range(self.start_step, len(self.batches)),
                                      **loader_options(self.num_workers, pin_memory=cuda))
        return counted(iter(self._loader), self, self.batches.mean, self.batches.std,
                       device=self.device if cuda else None)


def data_info(cfg: DataConfig) -> DataInfo:
    """What the spec's source knows before the pipeline is built: labelled? class count?"""
    spec = parse_spec(cfg.spec)
    labelled, classes = spec.source.info(spec.target, spec.split or cfg.split, cfg.options)
    return DataInfo(cfg.spec, labelled, classes)


def pretrain_batches(cfg: DataConfig, *, image_size: int | tuple[int, int], batch_size: int,
                     seed: int, num_steps: int, start_step: int = 0, rank: int = 0,
                     world_size: int = 1, views: Callable | None = None,
                     stream_state: dict[str, Any] | None = None,
                     device: torch.device | str | None = None, held_out: int = 0) -> Batches:
    """Batches for pretraining; ``batch_size`` is per rank (global = batch_size * world_size).

    Augmentation keys of ``cfg`` still unset take the source's values.
    ``views`` (an objective's multi-view transform) replaces the single
    augmented view. ``stream_state``: what a checkpoint saved of a stream
    (:class:`~vitssl.data.source.StreamRequest`). ``device``: on CUDA,
    map-style batches come through pinned memory and are finished there.
    ``held_out``: how many items at the end of map-style data are never drawn.
    """
    cfg = resolve_augmentation(cfg)  # returns cfg itself when nothing is unset
    mean, std = normalisation(cfg)
    transform = v2.Compose([Bands(cfg.channels), views]) if views else pretrain_transform(
        image_size, cfg.crop_scale, cfg.hflip, cfg.augment, cfg.crop_ratio, cfg.translate,
        as_uint8=True, channels=cfg.channels)
    spec = parse_spec(cfg.spec)
    source = spec.source
    workers = resolve_num_workers(cfg.num_workers, in_memory=source.in_memory,
                                  cores=usable_cores(), ranks=local_ranks(world_size))
    if source.streams:
        return source.stream(spec.target, StreamRequest(
            cfg, transform, batch_size, seed, num_batches=max(0, num_steps - start_step),
            num_workers=workers, start_step=start_step, rank=rank, world_size=world_size,
            stream_state=stream_state))
    dataset = open_dataset(spec, cfg.split, **cfg.options)
    batches = StepBatches(dataset, transform, batch_size=batch_size, seed=seed, mean=mean,
                          std=std, rank=rank, world_size=world_size, num_steps=num_steps,
                          on_error=cfg.on_error, seed_per_sample=views is not None,
                          held_out=held_out)
    classes = getattr(dataset, "num_classes", None)
    return PretrainBatches(batches, start_step, workers, bool(classes), classes,
                           device=torch.device(device) if device is not None else None)
