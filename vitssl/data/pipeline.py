"""The one entry point the training loop uses to get pretraining batches from any spec.

Map-style specs (``builtin:``, ``folder:``, ``vtab1k:``) give deterministic
batches: batch ``s`` is a pure function of (seed, s), so a resumed run sees
exactly the batches of an uninterrupted one (:mod:`vitssl.data.batches`).
``wds:`` specs stream shards; a run resumed from a checkpoint continues the
stream from the position saved in it (:mod:`vitssl.data.wds`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from vitssl.config import DataConfig
from vitssl.data.augment import resolve_augmentation
from vitssl.data.batches import StepBatches, finish_batch, step_loader
from vitssl.data.sources import open_dataset
from vitssl.data.spec import parse_spec
from vitssl.data.transforms import pretrain_transform
from vitssl.data.wds import ShardStream, expand_urls, first_sample
from vitssl.data.wds_position import RankPosition, boundary
from vitssl.errors import VitsslError
from vitssl.objective import DataInfo


def _counted(batches: Iterator[dict], owner: PretrainBatches | StreamBatches,
             mean: tuple[float, ...], std: tuple[float, ...]) -> Iterator[dict]:
    """Finish each batch, moving its ``"_skipped"`` count to ``owner.skipped``.

    Errors raised in workers come out as one line.
    """
    try:
        for batch in batches:
            owner.skipped += int(batch.pop("_skipped", 0))
            position = batch.pop("_position", None)
            if position is not None:
                owner.position.update(position)
            yield finish_batch(batch, mean, std)
    except VitsslError as exc:
        # Raised in a DataLoader worker, it arrives with the worker's traceback in its
        # message; its last line is "module.ErrorType: message".
        lines = [line for line in str(exc).splitlines() if line.strip()]
        if len(lines) <= 1:
            raise
        raise VitsslError(lines[-1].split(": ", 1)[-1]) from None


@dataclass
class PretrainBatches:
    """Iterable of batch dicts for steps ``start_step .. num_steps - 1`` on this rank.

    Each batch: ``"image"`` normalised float (B, 3, H, W), ``"pixels"`` the same
    images in [0, 1] before normalisation (or, with an objective's views,
    ``"views"`` and ``"view_pixels"``: name -> (B, V, 3, h, w)), and ``"label"``
    long (B,) when the data is labelled. ``skipped`` counts samples dropped as unreadable so far;
    ``num_classes`` is the dataset's class count (None when unlabelled).
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
        """Map-style batches are a pure function of the step: no stream position to save."""
        return None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        loader = step_loader(self.batches, self.start_step, self.num_workers)
        return _counted(loader, self, self.batches.mean, self.batches.std)


@dataclass
class StreamBatches:
    """Like :class:`PretrainBatches`, from a ``wds:`` stream: ``num_steps - start_step`` batches.

    ``position`` follows the batches handed out (save ``position.to_state()``
    with a checkpoint; pass it back as ``stream_state`` to continue);
    ``resume_note`` says how a resumed stream restarted when not exactly.
    """

    stream: ShardStream
    num_batches: int
    num_workers: int
    labelled: bool
    num_classes: int | None = None  # unknown without reading every shard
    skipped: int = field(default=0)
    position: RankPosition | None = None
    resume_note: str | None = None

    def __post_init__(self) -> None:
        if self.position is None:
            self.position = RankPosition(max(1, self.num_workers), len(self.stream.urls),
                                         self.stream.resampled)

    def __len__(self) -> int:
        return self.num_batches

    def stream_state(self) -> dict[str, Any] | None:
        """This rank's stream position, to save with a checkpoint."""
        return self.position.to_state()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            persistent_workers=False)
        return _counted(self._exactly(loader), self, self.stream.mean, self.stream.std)

    def _exactly(self, loader: DataLoader) -> Iterator[dict]:
        count = 0
        for batch in itertools.islice(iter(loader), self.num_batches):
            count += 1
            yield batch
        if count < self.num_batches:
            raise VitsslError(f"wds: the stream ran dry after {count} of {self.num_batches} "
                              f"batches: no readable samples left in "
                              f"{self.stream.urls[0]} .. {self.stream.urls[-1]} "
                              f"(see the skipped-sample warnings)")


def data_info(cfg: DataConfig) -> DataInfo:
    """What is known about the data before the pipeline is built (labelled, classes)."""
    spec = parse_spec(cfg.spec)
    if spec.kind == "wds":
        return DataInfo(cfg.spec, "cls" in first_sample(expand_urls(spec.target)), None)
    classes = getattr(open_dataset(spec, cfg.split), "num_classes", None)
    return DataInfo(cfg.spec, bool(classes), classes)


def pretrain_batches(cfg: DataConfig, *, image_size: int | tuple[int, int], batch_size: int,
                     seed: int, num_steps: int, start_step: int = 0, rank: int = 0,
                     world_size: int = 1, views: Callable | None = None,
                     stream_state: dict[str, Any] | None = None,
                     ) -> PretrainBatches | StreamBatches:
    """Batches for pretraining; ``batch_size`` is per rank (global = batch_size * world_size).

    ``views`` (an objective's multi-view transform) replaces the single
    augmented view: batches then hold ``"views"`` / ``"view_pixels"`` instead
    of ``"image"`` / ``"pixels"``. ``stream_state`` (``wds:`` only): the
    stream positions a checkpoint saved (:func:`stream_resume`).
    """
    cfg = resolve_augmentation(cfg)
    transform = views or pretrain_transform(image_size, cfg.crop_scale, cfg.hflip, cfg.augment,
                                            cfg.crop_ratio, cfg.translate, as_uint8=True)
    spec = parse_spec(cfg.spec)
    on_error = getattr(cfg, "on_error", "skip")
    if spec.kind == "wds":
        urls = expand_urls(spec.target)
        labelled = "cls" in first_sample(urls)
        resampled = getattr(cfg, "resampled", None)
        resampled = world_size > 1 if resampled is None else resampled
        stream = ShardStream(urls, transform, batch_size=batch_size, seed=seed,
                             mean=cfg.mean, std=cfg.std, labelled=labelled, rank=rank,
                             world_size=world_size, resampled=resampled,
                             shuffle_buffer=cfg.shuffle_buffer, on_error=on_error)
        note = stream_resume(stream, stream_state, start_step, max(1, cfg.num_workers))
        return StreamBatches(stream, max(0, num_steps - start_step), cfg.num_workers, labelled,
                             resume_note=note)
    dataset = open_dataset(spec, cfg.split)
    batches = StepBatches(dataset, transform, batch_size=batch_size, seed=seed, mean=cfg.mean,
                          std=cfg.std, rank=rank, world_size=world_size, num_steps=num_steps,
                          on_error=on_error, seed_per_sample=views is not None)
    classes = getattr(dataset, "num_classes", None)
    return PretrainBatches(batches, start_step, cfg.num_workers, bool(classes), classes)


def stream_resume(stream: ShardStream, saved: dict[str, Any] | None, start_step: int,
                  num_workers: int) -> str | None:
    """Point a stream at a checkpoint's saved position; say how, unless it continues exactly.

    ``saved``: ``{"world_size": N, "ranks": [rank position state, ...]}``.
    """
    if start_step == 0 and saved is None:
        return None
    mine = None
    if saved is not None and int(saved["world_size"]) == stream.world_size:
        mine = saved["ranks"][stream.rank]
    if mine is None or int(mine["num_shards"]) != len(stream.urls) \
            or bool(mine["resampled"]) != stream.resampled:
        stream.origin = start_step
        why = ("holds no stream position" if saved is None else
               f"was written on {saved['world_size']} ranks, this run has {stream.world_size}"
               if mine is None else "was written for other shards or data.resampled")
        return (f"wds: the checkpoint {why}; the stream restarts with a fresh draw seeded by "
                f"step {start_step} (some samples may be seen twice or not at all)")
    if int(mine["num_workers"]) == num_workers:
        stream.resume = mine
        return None
    epoch, first = boundary(mine, stream.resampled, len(stream.rank_shards(0)))
    stream.start = (epoch, first)
    where = f"pass {epoch}" + ("" if stream.resampled else f", shard {first} of this rank's")
    return (f"wds: the checkpoint's stream position is for {mine['num_workers']} data workers, "
            f"this run has {num_workers}; resuming at the next shard boundary ({where}); "
            f"samples left in partly read shards and shuffle buffers are skipped")
