"""The endless, resumable stream of ``wds:`` batches of one rank (split by DataLoader worker).

Per rank and worker: shard order → samples → shuffle buffer (emptied at the
end of each pass over the shards) → decode + augment → batches (which may
straddle passes). Without resampling, pass ``e`` shuffles all shards with a
seed from (seed, e); rank r takes every world_size-th shard of it and worker w
every num_workers-th of those. With ``resampled`` worker w of rank r draws
pass e's shards with replacement, seeded by (seed, rank, worker, e), so every
rank can deliver any number of batches. Every batch carries its worker's
position after it (:meth:`WorkerStream.snapshot`), from which a stream
continues exactly (:mod:`vitssl.data.streams`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vitssl.config import normalisation
from vitssl.data.batches import stack_outputs
from vitssl.data.decode import CorruptImage, SkipLog
from vitssl.data.source import StreamRequest
from vitssl.data.wds import decode_sample, shard_samples
from vitssl.errors import VitsslError

RNG_VERSION = 3  # random.Random.getstate() format


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    words = [int(p) & 0xFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def _reread(urls: list[str], refs: list[tuple[int, int]]) -> list[tuple[int, int, Any]]:
    """The shuffle buffer's samples ``(shard, index in shard)``, read again from their shards."""
    wanted = set(refs)
    found = {(shard, index): sample for shard in sorted({s for s, _ in refs})
             for index, sample in enumerate(shard_samples(urls[shard], SkipLog("skip")))
             if (shard, index) in wanted}
    missing = [ref for ref in refs if ref not in found]
    if missing:
        shard, index = missing[0]
        raise VitsslError(f"wds: cannot resume the stream: sample {index} of shard "
                          f"{urls[shard]} is gone (were the shards rewritten since the "
                          f"checkpoint?)")
    return [(s, i, found[(s, i)]) for s, i in refs]


class WorkerStream:
    """One worker's stream of decoded samples, with a position that can be saved and restored."""

    def __init__(self, stream: ShardStream, worker: int, num_workers: int, errors: SkipLog,
                 position: dict[str, Any] | None = None) -> None:
        self.stream, self.worker, self.num_workers = stream, worker, num_workers
        self.errors = errors
        seed = derive_seed(stream.seed, stream.origin, stream.rank, worker, 4, *stream.start)
        self.aug = torch.Generator().manual_seed(seed).get_state()
        self.epoch, self.good, self.empty = stream.start[0], 0, 0
        self._new_pass()
        if position is not None:
            self._restore(position)

    def _new_pass(self) -> None:
        self.shard, self.offset, self.held, self.draining = 0, 0, [], False
        self.rng = random.Random(derive_seed(self.stream.seed, self.stream.origin,
                                             self.stream.rank, self.worker, self.epoch, 3))

    def snapshot(self) -> dict[str, Any]:
        """Where the next sample comes from, in plain values and tensors (``weights_only``).

        ``shard`` indexes this worker's list for pass ``epoch``; ``held`` is the
        shuffle buffer as (shard, index) rows, re-read on resume; ``good`` /
        ``empty``: readable samples in this pass, passes in a row without one.
        """
        held = [(s, i) for s, i, _ in self.held]
        return {"epoch": self.epoch, "shard": self.shard, "offset": self.offset,
                "held": torch.tensor(held, dtype=torch.long).reshape(-1, 2),
                "draining": self.draining, "good": self.good, "empty": self.empty,
                "rng": torch.tensor(self.rng.getstate()[1], dtype=torch.long),
                "aug": self.aug.clone()}

    def _restore(self, pos: dict[str, Any]) -> None:
        self.epoch, self.good, self.empty = int(pos["epoch"]), int(pos["good"]), int(pos["empty"])
        self.shard, self.offset = int(pos["shard"]), int(pos["offset"])
        self.draining, self.aug = bool(pos["draining"]), pos["aug"].clone()
        self.rng = random.Random()
        self.rng.setstate((RNG_VERSION, tuple(int(v) for v in pos["rng"].tolist()), None))
        refs = [(int(s), int(i)) for s, i in pos["held"].tolist()]
        self.held = _reread(self.stream.pass_shards(self.epoch, self.worker, self.num_workers),
                            refs)

    def _raw(self, urls: list[str]) -> Iterator[tuple[int, int, Any]]:
        """(shard, index, sample) from the current position to the end of the pass."""
        while self.shard < len(urls):
            for index, sample in enumerate(shard_samples(urls[self.shard], self.errors)):
                if index >= self.offset:
                    self.offset = index + 1
                    yield self.shard, index, sample
            self.shard, self.offset = self.shard + 1, 0

    def _shuffled(self, urls: list[str]) -> Iterator[Any]:
        """Reservoir-style shuffle: hold ``shuffle_buffer`` samples, emit one per arrival."""
        size = self.stream.shuffle_buffer
        if not self.draining:
            for ref in self._raw(urls):
                if size <= 1:
                    yield ref[2]
                    continue
                if len(self.held) < size:
                    self.held.append(ref)
                    continue
                i = self.rng.randrange(len(self.held))
                self.held[i], ref = ref, self.held[i]
                yield ref[2]
            self.rng.shuffle(self.held)
            self.held.reverse()  # emitted from the end: the shuffled order
            self.draining = True
        while self.held:
            yield self.held.pop()[2]

    def samples(self) -> Iterator[tuple[Any, int]]:
        """Decoded (image, label) until this worker has no shards or its passes yield
        nothing readable (1 pass; 20 with resampling)."""
        while True:
            urls = self.stream.pass_shards(self.epoch, self.worker, self.num_workers)
            if not urls and self.stream.pass_shards(self.epoch + 1, self.worker,
                                                    self.num_workers):
                self.epoch += 1  # a resumed partial pass left this worker nothing
                self._new_pass()
                continue
            if not urls:
                return  # more workers than shards on this rank: this worker has none
            for sample in self._shuffled(urls):
                try:
                    item = decode_sample(sample, self.stream.labelled, self.stream.layout)
                except CorruptImage as exc:
                    self.errors.skip(str(exc))
                    continue
                self.good += 1
                yield item
            self.empty = 0 if self.good else self.empty + 1
            if self.empty >= (20 if self.stream.resampled else 1):
                return
            self.epoch, self.good = self.epoch + 1, 0
            self._new_pass()


class ShardStream(IterableDataset):
    """An endless stream of batch dicts from webdataset shards (one rank; split by worker).

    Each batch: the stacked transform outputs, ``"label"`` when labelled,
    ``"_skipped"`` and ``"_position"`` (the worker's position after it).
    Set by :func:`~vitssl.data.streams.stream_resume`: ``resume``, a rank
    position to continue exactly; ``start``, the (epoch, shard) to begin at
    otherwise; ``origin``, mixed into every seed (the step of a fresh draw).
    """

    def __init__(self, urls: list[str], request: StreamRequest, *, labelled: bool,
                 resampled: bool, shuffle_buffer: int) -> None:
        self.urls, self.transform, self.labelled = list(urls), request.transform, labelled
        self.batch_size, self.seed, self.origin = request.batch_size, request.seed, 0
        self.mean, self.std = normalisation(request.data)
        self.rank, self.world_size = request.rank, request.world_size
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer
        self.on_error = request.data.on_error
        self.layout = request.data.options.get("layout", "auto")
        self.start: tuple[int, int] = (0, 0)
        self.resume: dict[str, Any] | None = None
        SkipLog(self.on_error)  # validates the setting before any worker starts
        if not resampled and len(self.urls) < self.world_size:
            raise VitsslError(f"wds: {len(self.urls)} shards cannot be split over "
                              f"{self.world_size} ranks; write more shards or set "
                              f"data.options.resampled=true")

    def rank_shards(self, epoch: int) -> list[str]:
        """This rank's shards in pass ``epoch`` (without resampling)."""
        order = list(self.urls)
        random.Random(derive_seed(self.seed, self.origin, epoch, 2)).shuffle(order)
        return order[self.rank::self.world_size]

    def pass_shards(self, epoch: int, worker: int, num_workers: int) -> list[str]:
        """The shards worker ``worker`` reads in pass ``epoch``, in order."""
        if self.resampled:
            rng = random.Random(derive_seed(self.seed, self.origin, self.rank, worker, epoch, 1))
            return [rng.choice(self.urls) for _ in self.urls]
        shards = self.rank_shards(epoch)
        if epoch == self.start[0]:
            shards = shards[self.start[1]:]
        return shards[worker::num_workers]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info else (0, 1)
        rotate = int(self.resume["next_worker"]) if self.resume else 0
        worker = (physical + rotate) % num_workers
        errors = SkipLog(self.on_error, carry=True)  # logged by the main process (counted)
        position = self.resume["workers"][worker] if self.resume else None
        source = WorkerStream(self, worker, num_workers, errors, position)
        pending: list[tuple[Any, int]] = []
        for item in source.samples():
            pending.append(item)
            if len(pending) == self.batch_size:
                with torch.random.fork_rng(devices=[]):
                    torch.set_rng_state(source.aug)
                    batch = stack_outputs([self.transform(image) for image, _ in pending],
                                          self.mean, self.std)
                    source.aug = torch.get_rng_state()
                batch["_skipped"] = torch.tensor(errors.take())
                if errors.messages:
                    batch["_skip_messages"], errors.messages = errors.messages, []
                batch["_position"] = {"worker": worker, **source.snapshot()}
                if self.labelled:
                    batch["label"] = torch.tensor([label for _, label in pending],
                                                  dtype=torch.long)
                pending = []
                yield batch
