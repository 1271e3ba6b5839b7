"""The one entry point the training loop uses to get pretraining batches from any spec."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from vitssl.config import DataConfig
from vitssl.data.batches import StepBatches, step_loader
from vitssl.data.sources import open_dataset
from vitssl.data.transforms import pretrain_transform


@dataclass
class PretrainBatches:
    """Iterable of batch dicts for steps ``start_step .. num_steps - 1`` on this rank.

    Each batch: ``"image"`` normalised float (B, 3, S, S), ``"pixels"`` the same
    images in [0, 1] before normalisation, and ``"label"`` long (B,) when the
    data is labelled. ``skipped`` counts samples dropped as unreadable.
    """

    batches: StepBatches
    start_step: int
    num_workers: int
    labelled: bool
    skipped: int = field(default=0)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return step_loader(self.batches, self.start_step, self.num_workers)


def pretrain_batches(cfg: DataConfig, *, image_size: int, batch_size: int, seed: int,
                     num_steps: int, start_step: int = 0, rank: int = 0,
                     world_size: int = 1) -> PretrainBatches:
    """Batches for pretraining; ``batch_size`` is per rank (global = batch_size * world_size)."""
    dataset = open_dataset(cfg.spec, cfg.split)
    transform = pretrain_transform(image_size, cfg.crop_scale, cfg.hflip, cfg.augment)
    batches = StepBatches(dataset, transform, batch_size=batch_size, seed=seed, mean=cfg.mean,
                          std=cfg.std, rank=rank, world_size=world_size, num_steps=num_steps)
    labelled = bool(getattr(dataset, "num_classes", None))
    return PretrainBatches(batches, start_step, cfg.num_workers, labelled)
