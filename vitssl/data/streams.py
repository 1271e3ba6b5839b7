"""``wds:`` batches for the loop: a fixed number of batches from an endless shard stream.

Resumed with the same world size and worker count, a stream continues
exactly; with another worker count at the next shard boundary; with another
world size, or from a checkpoint without a position, as a fresh draw seeded
by the step (:func:`stream_resume`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from vitssl.data.batches import counted
from vitssl.data.source import StreamRequest
from vitssl.data.wds import expand_urls, is_labelled
from vitssl.data.wds_stream import ShardStream
from vitssl.errors import VitsslError


@dataclass
class StreamBatches:
    """:class:`~vitssl.data.source.Batches` of ``num_batches`` batches from a ``wds:`` stream.

    ``position``: this rank's, per logical worker the position after its last
    batch. Physical worker ``p`` plays logical worker ``(p + next_worker) %
    num_workers``, so the DataLoader's round robin resumes where it stopped.
    """

    stream: ShardStream
    num_batches: int
    num_workers: int
    labelled: bool
    position: dict[str, Any]
    resume_note: str | None = None
    num_classes: int | None = None  # unknown without reading every shard
    skipped: int = 0

    def __len__(self) -> int:
        return self.num_batches

    def stream_state(self) -> dict[str, Any] | None:
        """This rank's position after the batches handed out, to save with a checkpoint."""
        return {**self.position, "workers": list(self.position["workers"])}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return counted(self._exactly(), self, self.stream.mean, self.stream.std)

    def _exactly(self) -> Iterator[dict]:
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers)
        count = 0
        for batch in itertools.islice(loader, self.num_batches):
            count += 1
            position = batch.pop("_position")
            worker = int(position.pop("worker"))
            self.position["workers"][worker] = position
            self.position["next_worker"] = (worker + 1) % self.position["num_workers"]
            yield batch
        if count < self.num_batches:
            raise VitsslError(f"wds: the stream ran dry after {count} of {self.num_batches} "
                              f"batches: no readable samples left in "
                              f"{self.stream.urls[0]} .. {self.stream.urls[-1]} "
                              f"(see the skipped-sample warnings)")


def open_stream(pattern: str, request: StreamRequest, *, shuffle_buffer: int = 1000,
                resampled: bool | None = None) -> StreamBatches:
    """The batches ``request`` asks for from the shards ``pattern`` names.

    ``resampled`` None: draw shards with replacement when ``world_size > 1``.
    With ``data.num_workers`` "auto", a resumed stream keeps the worker count
    its saved position was written with, so it continues exactly.
    """
    urls = expand_urls(pattern)
    labelled = is_labelled(urls)
    resampled = request.world_size > 1 if resampled is None else resampled
    stream = ShardStream(urls, request, labelled=labelled, resampled=resampled,
                         shuffle_buffer=shuffle_buffer)
    saved, workers = request.stream_state, request.num_workers
    if request.data.num_workers == "auto" and saved \
            and int(saved["world_size"]) == request.world_size and saved["ranks"][request.rank]:
        workers = int(saved["ranks"][request.rank]["num_workers"])
    logical = max(1, workers)
    note = stream_resume(stream, saved, request.start_step, logical)
    position = {"num_workers": logical, "num_shards": len(urls), "resampled": resampled,
                "next_worker": 0, "workers": [None] * logical}
    return StreamBatches(stream, request.num_batches, workers, labelled, position, note)


def boundary(saved: dict[str, Any], resampled: bool, rank_shards: int) -> tuple[int, int]:
    """(epoch, first shard) at which a stream saved with another worker count resumes.

    Without resampling: the first shard of the rank's pass that no worker had
    started (shards another worker had not reached yet are skipped; partly
    read ones are not re-read). With resampling: a fresh pass after the
    furthest one any worker was in.
    """
    workers = saved["num_workers"]
    started = [(0, 0)]
    for w, pos in enumerate(saved["workers"]):
        if pos is None:
            continue
        count = int(pos["shard"]) + (1 if int(pos["offset"]) > 0 else 0)  # shards started
        started.append((int(pos["epoch"]), (count - 1) * workers + w + 1 if count else 0))
    epoch, first = max(started)
    if resampled or first >= rank_shards:
        return epoch + 1, 0
    return epoch, first


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
               if mine is None else "was written for other shards or data.options.resampled")
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
