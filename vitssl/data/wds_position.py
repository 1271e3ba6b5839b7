"""Where a ``wds:`` stream stands, saved with each checkpoint so a resumed run continues it.

One DataLoader worker's position (:func:`snapshot`) is a dict of plain values
and tensors (``torch.load(weights_only=True)`` reads it back):

- ``epoch``: the pass over the shards; ``shard``: index of the shard being
  read in this worker's list for the pass; ``offset``: samples already read
  from it (readers skip them without decoding);
- ``held``: (K, 2) long, the shuffle buffer's samples as (shard, index in
  shard), in buffer order (re-read from their shards on resume);
  ``draining``: the pass has been read and the buffer is being emptied;
- ``rng``: the shuffle buffer's ``random.Random`` state; ``aug``: the
  augmentation generator's state; ``good`` / ``empty``: readable samples so far
  in this pass and passes in a row without one (to end a stream that ran dry).

A rank's position (:class:`RankPosition`) holds its workers' positions by
*logical* worker and the logical worker whose batch comes next; the loader's
physical worker ``p`` plays logical worker ``(p + next_worker) % num_workers``,
so the DataLoader's round robin resumes where it stopped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

RNG_VERSION = 3  # random.Random.getstate() format


def rng_to_tensor(rng: random.Random) -> torch.Tensor:
    version, state, _ = rng.getstate()
    return torch.tensor(state, dtype=torch.long)


def rng_from_tensor(values: torch.Tensor) -> random.Random:
    rng = random.Random()
    rng.setstate((RNG_VERSION, tuple(int(v) for v in values.tolist()), None))
    return rng


@dataclass
class RankPosition:
    """One rank's stream position: per logical worker the position after its last batch."""

    num_workers: int
    num_shards: int
    resampled: bool
    workers: list[dict[str, Any] | None] = field(default_factory=list)
    next_worker: int = 0

    def __post_init__(self) -> None:
        if not self.workers:
            self.workers = [None] * self.num_workers

    def update(self, position: dict[str, Any]) -> None:
        """Record the position a worker reported with the batch just consumed."""
        worker = int(position["worker"])
        self.workers[worker] = {k: v for k, v in position.items() if k != "worker"}
        self.next_worker = (worker + 1) % self.num_workers

    def to_state(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "num_shards": self.num_shards,
                "resampled": self.resampled, "next_worker": self.next_worker,
                "workers": list(self.workers)}


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
