"""``wds:URLS``: streaming pretraining batches from webdataset tar shards.

URLS is a brace pattern (``/data/shard-{000000..000127}.tar``), several
patterns joined by ``::``, local paths, ``file:``, ``pipe:CMD`` or http(s)
URLs (opened with webdataset's ``gopen``). A sample is the group of
consecutive tar members sharing a key; its image is the ``jpg`` (or ``jpeg``,
``png``, ``webp``) member and its label the optional ``cls`` member (ASCII
integer). The data counts as labelled when the first sample has ``cls``.

Per rank and DataLoader worker the stream is: shard order → tar members →
samples → shuffle buffer (emptied at the end of each pass over the shards, so
a pass yields each of its samples once) → decode + augment → batches of
``batch_size`` (batches may straddle passes).

- Shard order. Without resampling, pass ``e = 0, 1, ...`` shuffles all shards
  with a seed from (seed, start_step, e); rank r takes every world_size-th shard
  of it and worker w every num_workers-th of those (split by node, then by
  worker — done here, so no torch.distributed state is needed). With
  ``resampled`` (default when world_size > 1), each worker draws shards with
  replacement from a generator seeded by (seed, start_step, rank, worker), so
  every rank can deliver any number of batches.
- The stream is endless; the caller takes exactly ``num_steps - start_step``
  batches, the same count on every rank.
- Resume. The stream for a run started (or resumed) at ``start_step`` is a
  pure function of (seed, start_step, rank, world_size, num_workers): resuming
  at the same step reproduces the same batches, but they are a fresh draw, not
  the continuation the interrupted run would have read.
- Errors. A sample whose image does not decode, lacks an image, has a bad
  ``cls``, or lacks ``cls`` in labelled data, and the sample being read when a
  shard turns out truncated or unreadable, are skipped: each is logged with its
  shard and key and counted. ``on_error="raise"`` makes the first one fatal.
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vitssl.data.batches import stack_outputs
from vitssl.data.decode import CorruptImage, decode_image
from vitssl.data.skips import SkipLog
from vitssl.errors import VitsslError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def expand_urls(pattern: str) -> list[str]:
    """Brace-expand a shard pattern; local shards must exist."""
    from webdataset.shardlists import expand_urls as wds_expand

    try:
        urls = list(wds_expand(pattern))
    except Exception as exc:  # noqa: BLE001 - braceexpand raises several types
        raise VitsslError(f"wds:{pattern}: cannot expand the shard pattern: {exc}") from None
    if not urls:
        raise VitsslError(f"wds:{pattern}: the pattern names no shards")
    for url in urls:
        if not _is_remote(url):
            path = Path(url.removeprefix("file://").removeprefix("file:"))
            if not path.is_file():
                raise VitsslError(f"wds: shard {url} does not exist")
    return urls


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url and not url.startswith("file:")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    words = [int(p) & 0xFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def shard_samples(url: str, errors: SkipLog) -> Iterator[dict[str, Any]]:
    """Samples ``{"__key__", "__url__", ext: bytes, ...}`` of one shard, in tar order."""
    from webdataset.gopen import gopen

    current: dict[str, Any] | None = None
    last_key, done = None, False
    try:
        stream = gopen(url, "rb")
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    tar.members = []  # stream mode would keep every header in memory
                    if not member.isreg():
                        continue
                    directory, _, name = member.name.rpartition("/")
                    stem, dot, ext = name.partition(".")
                    if not dot or not stem or stem.startswith("__"):
                        continue
                    key = f"{directory}/{stem}" if directory else stem
                    if current is not None and current["__key__"] != key:
                        last_key = current["__key__"]
                        yield current
                        current = None
                    if current is None:
                        current = {"__key__": key, "__url__": url}
                    current[ext.lower()] = tar.extractfile(member).read()
            done = True
        finally:
            try:
                stream.close()  # a pipe reports its exit status here
            except Exception:
                if done:
                    raise
    except Exception as exc:  # noqa: BLE001 - tarfile, gzip, pipes and sockets all differ
        where = (f"at key {current['__key__']}" if current
                 else f"after key {last_key}" if last_key else "before its first sample")
        errors.skip(f"shard {url} is truncated or unreadable {where}: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return
    if current is not None:
        yield current


def decode_sample(sample: dict[str, Any], labelled: bool) -> tuple[Any, int]:
    """(RGB PIL image, label or -1); :class:`CorruptImage` when unusable."""
    where = f"{sample['__url__']} key {sample['__key__']}"
    ext = next((k for k in IMAGE_KEYS if k in sample), None)
    if ext is None:
        found = ", ".join(k for k in sample if not k.startswith("__"))
        raise CorruptImage(f"{where}: no image member (have: {found or 'nothing'}; "
                           f"need one of {', '.join(IMAGE_KEYS)})")
    image = decode_image(sample[ext], f"{where}.{ext}")
    if not labelled:
        return image, -1
    if "cls" not in sample:
        raise CorruptImage(f"{where}: no cls member in labelled data")
    try:
        return image, int(sample["cls"].decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise CorruptImage(f"{where}: cls {sample['cls'][:20]!r} is not an integer") from None


def shuffled(items: Iterable[Any], buffer: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle: hold ``buffer`` items, emit a random one per arrival."""
    if buffer <= 1:
        yield from items
        return
    held: list[Any] = []
    for item in items:
        if len(held) < buffer:
            held.append(item)
            continue
        i = rng.randrange(len(held))
        held[i], item = item, held[i]
        yield item
    rng.shuffle(held)
    yield from held


class ShardStream(IterableDataset):
    """An endless stream of batch dicts from webdataset shards (one rank; split by worker).

    Each batch: the transform's outputs stacked (see
    :func:`~vitssl.data.batches.stack_outputs`), ``"label"`` when
    labelled, and ``"_skipped"`` the samples this worker skipped since its
    previous batch.
    """

    def __init__(self, urls: list[str], transform: Callable, *, batch_size: int, seed: int,
                 start_step: int, mean: tuple[float, ...], std: tuple[float, ...],
                 labelled: bool, rank: int = 0, world_size: int = 1, resampled: bool = False,
                 shuffle_buffer: int = 1000, on_error: str = "skip") -> None:
        self.urls, self.transform = list(urls), transform
        self.batch_size, self.seed, self.start_step = batch_size, seed, start_step
        self.mean, self.std, self.labelled = tuple(mean), tuple(std), labelled
        self.rank, self.world_size, self.resampled = rank, world_size, resampled
        self.shuffle_buffer, self.on_error = shuffle_buffer, on_error
        SkipLog(on_error)  # validates the setting before any worker starts
        if not resampled and len(self.urls) < world_size:
            raise VitsslError(f"wds: {len(self.urls)} shards cannot be split over {world_size} "
                              f"ranks; write more shards or set data.resampled=true")

    def passes(self, worker: int, num_workers: int) -> Iterator[list[str]]:
        """Successive passes over this worker's shards (endless)."""
        if self.resampled:
            rng = random.Random(derive_seed(self.seed, self.start_step, self.rank, worker, 1))
            while True:
                yield [rng.choice(self.urls) for _ in self.urls]
        epoch = 0
        while True:
            order = list(self.urls)
            random.Random(derive_seed(self.seed, self.start_step, epoch, 2)).shuffle(order)
            yield order[self.rank::self.world_size][worker::num_workers]
            epoch += 1

    def samples(self, worker: int, num_workers: int, errors: SkipLog,
                rng: random.Random) -> Iterator[tuple[Any, int]]:
        """Decoded (image, label), shuffled within each pass (the buffer empties at its end).

        Ends when this worker has no shards, or its passes yield nothing readable:
        one pass without resampling (the next would read the same shards), 20
        in a row with it.
        """
        empty_passes = 0
        for urls in self.passes(worker, num_workers):
            if not urls:
                return  # more workers than shards on this rank: this worker has none
            good = 0
            one_pass = (sample for url in urls for sample in shard_samples(url, errors))
            for sample in shuffled(one_pass, self.shuffle_buffer, rng):
                try:
                    item = decode_sample(sample, self.labelled)
                except CorruptImage as exc:
                    errors.skip(str(exc))
                    continue
                good += 1
                yield item
            empty_passes = 0 if good else empty_passes + 1
            if empty_passes >= (20 if self.resampled else 1):
                return

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        errors = SkipLog(self.on_error)
        rng = random.Random(derive_seed(self.seed, self.start_step, self.rank, worker, 3))
        aug_state = torch.Generator().manual_seed(
            derive_seed(self.seed, self.start_step, self.rank, worker, 4)).get_state()
        pending: list[tuple[Any, int]] = []
        for item in self.samples(worker, num_workers, errors, rng):
            pending.append(item)
            if len(pending) == self.batch_size:
                with torch.random.fork_rng(devices=[]):
                    torch.set_rng_state(aug_state)
                    batch = stack_outputs([self.transform(image) for image, _ in pending],
                                          self.mean, self.std)
                    aug_state = torch.get_rng_state()
                batch["_skipped"] = torch.tensor(errors.take())
                if self.labelled:
                    batch["label"] = torch.tensor([label for _, label in pending],
                                                  dtype=torch.long)
                pending = []
                yield batch


def first_sample(urls: list[str]) -> dict[str, Any]:
    """The first readable sample in shard order (to tell labelled data from unlabelled)."""
    errors = SkipLog("skip")
    for url in urls:
        for sample in shard_samples(url, errors):
            return sample
    raise VitsslError(f"wds: no readable samples in {len(urls)} shard(s) (e.g. {urls[0]})")
