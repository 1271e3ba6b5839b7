"""``wds:`` batches for the loop: a fixed number of batches from an endless shard stream.

:func:`open_stream` builds the stream of one rank and points it at a
checkpoint's saved position (:func:`stream_resume`); :class:`StreamBatches`
hands out exactly the batches a run needs and follows the stream's position.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from vitssl.data.batches import counted
from vitssl.data.wds import ShardStream, expand_urls, is_labelled
from vitssl.data.wds_position import RankPosition, boundary
from vitssl.errors import VitsslError


@dataclass
class StreamBatches:
    """Like :class:`~vitssl.data.pipeline.PretrainBatches`, from a ``wds:`` stream.

    ``num_batches`` batches; ``position`` follows the batches handed out
    (:meth:`stream_state` is what a checkpoint saves; pass it back as
    ``stream_state`` to continue); ``resume_note`` says how a resumed stream
    restarted when not exactly.
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
        """This rank's stream position after the batches handed out, to save with a checkpoint."""
        return self.position.to_state()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            persistent_workers=False)
        return counted(self._exactly(loader), self, self.stream.mean, self.stream.std)

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


def open_stream(pattern: str, *, transform: Callable, batch_size: int, seed: int, data: Any,
                rank: int, world_size: int, start_step: int, num_batches: int,
                stream_state: dict[str, Any] | None) -> StreamBatches:
    """The batches of rank ``rank`` from the shards ``pattern`` names (``data``: a DataConfig)."""
    urls = expand_urls(pattern)
    labelled = is_labelled(urls)
    resampled = world_size > 1 if data.resampled is None else data.resampled
    stream = ShardStream(urls, transform, batch_size=batch_size, seed=seed, mean=data.mean,
                         std=data.std, labelled=labelled, rank=rank, world_size=world_size,
                         resampled=resampled, shuffle_buffer=data.shuffle_buffer,
                         on_error=data.on_error)
    note = stream_resume(stream, stream_state, start_step, max(1, data.num_workers))
    return StreamBatches(stream, num_batches, data.num_workers, labelled, resume_note=note)


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
