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
  with a seed from (seed, e); rank r takes every world_size-th shard of it and
  worker w every num_workers-th of those (split by node, then by worker — done
  here, so no torch.distributed state is needed). With ``resampled`` (default
  when world_size > 1), worker w of rank r draws pass e's shards with
  replacement from a generator seeded by (seed, rank, worker, e), so every
  rank can deliver any number of batches.
- The stream is endless; the caller takes exactly ``num_steps - start_step``
  batches, the same count on every rank.
- Resume. Every batch carries its worker's position after it (pass, shard,
  offset in the shard, the shuffle buffer's samples by reference, shuffle and
  augmentation RNG states: :mod:`vitssl.data.wds_position`); checkpoints save
  the positions of the last consumed batches. Resumed with the same world size
  and worker count, the stream continues exactly where the interrupted run
  would have (the buffer's samples are re-read from their shards). With
  another worker count it restarts at the next shard boundary; with another
  world size, or from a checkpoint without a position, it is a fresh draw
  seeded by the step. Both are said on stderr.
- Errors. A sample whose image does not decode, lacks an image, has a bad
  ``cls``, or lacks ``cls`` in labelled data, and the sample being read when a
  shard turns out truncated or unreadable, are skipped: each is logged with its
  shard and key and counted. ``on_error="raise"`` makes the first one fatal.
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vitssl.data.batches import CarriedSkips, stack_outputs
from vitssl.data.decode import CorruptImage, decode_image
from vitssl.data.skips import SkipLog
from vitssl.data.wds_position import rng_from_tensor, rng_to_tensor
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


class WorkerStream:
    """One worker's stream of decoded samples, with a position that can be saved and restored.

    Samples run: this pass's shards (from ``shard``/``offset``) -> shuffle
    buffer (emptied at the end of each pass) -> decode. ``snapshot()`` taken
    between two samples describes exactly where the next one comes from.
    """

    def __init__(self, stream: ShardStream, worker: int, num_workers: int, errors: SkipLog,
                 position: dict[str, Any] | None = None) -> None:
        self.stream, self.worker, self.num_workers = stream, worker, num_workers
        self.errors, first_epoch = errors, stream.start[0]
        seed = derive_seed(stream.seed, stream.origin, stream.rank, worker, 4, *stream.start)
        self.aug = torch.Generator().manual_seed(seed).get_state()
        self.epoch, self.good, self.empty = first_epoch, 0, 0
        self._new_pass()
        if position is not None:
            self._restore(position)

    def _new_pass(self) -> None:
        self.shard, self.offset, self.held, self.draining = 0, 0, [], False
        self.rng = random.Random(derive_seed(self.stream.seed, self.stream.origin,
                                             self.stream.rank, self.worker, self.epoch, 3))

    def snapshot(self) -> dict[str, Any]:
        held = [(s, i) for s, i, _ in self.held]
        return {"epoch": self.epoch, "shard": self.shard, "offset": self.offset,
                "held": torch.tensor(held, dtype=torch.long).reshape(-1, 2),
                "draining": self.draining, "good": self.good, "empty": self.empty,
                "rng": rng_to_tensor(self.rng), "aug": self.aug.clone()}

    def _restore(self, pos: dict[str, Any]) -> None:
        self.epoch, self.good, self.empty = int(pos["epoch"]), int(pos["good"]), int(pos["empty"])
        self.shard, self.offset = int(pos["shard"]), int(pos["offset"])
        self.draining, self.rng = bool(pos["draining"]), rng_from_tensor(pos["rng"])
        self.aug = pos["aug"].clone()
        refs = [(int(s), int(i)) for s, i in pos["held"].tolist()]
        self.held = self._reread(self.stream.pass_shards(self.epoch, self.worker,
                                                         self.num_workers), refs)

    @staticmethod
    def _reread(urls: list[str], refs: list[tuple[int, int]]) -> list[tuple[int, int, Any]]:
        """The shuffle buffer's samples, read again from their shards."""
        found: dict[tuple[int, int], Any] = {}
        for shard in sorted({s for s, _ in refs}):
            wanted = {i for s, i in refs if s == shard}
            for index, sample in enumerate(shard_samples(urls[shard], SkipLog("skip"))):
                if index in wanted:
                    found[(shard, index)] = sample
        missing = [ref for ref in refs if ref not in found]
        if missing:
            shard, index = missing[0]
            raise VitsslError(f"wds: cannot resume the stream: sample {index} of shard "
                              f"{urls[shard]} is gone (were the shards rewritten since the "
                              f"checkpoint?)")
        return [(s, i, found[(s, i)]) for s, i in refs]

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
        """Decoded (image, label) from the current position (endless).

        Ends when this worker has no shards, or its passes yield nothing readable:
        one pass without resampling (the next would read the same shards), 20
        in a row with it.
        """
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
                    item = decode_sample(sample, self.stream.labelled)
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

    Each batch: the transform's outputs stacked (see
    :func:`~vitssl.data.batches.stack_outputs`), ``"label"`` when
    labelled, ``"_skipped"`` the samples this worker skipped since its
    previous batch and ``"_position"`` the worker's stream position after it
    (:mod:`vitssl.data.wds_position`).

    ``resume``: a rank position saved with the same worker count (the stream
    continues exactly); ``start``: (epoch, shard) where a stream that cannot
    continue exactly begins (another worker count: the next shard boundary);
    ``origin``: mixed into every seed (0, or the step of a fresh draw).
    """

    def __init__(self, urls: list[str], transform: Callable, *, batch_size: int, seed: int,
                 mean: tuple[float, ...], std: tuple[float, ...], labelled: bool,
                 rank: int = 0, world_size: int = 1, resampled: bool = False,
                 shuffle_buffer: int = 1000, on_error: str = "skip", origin: int = 0,
                 start: tuple[int, int] = (0, 0), resume: dict[str, Any] | None = None) -> None:
        self.urls, self.transform = list(urls), transform
        self.batch_size, self.seed, self.origin = batch_size, seed, origin
        self.mean, self.std, self.labelled = tuple(mean), tuple(std), labelled
        self.rank, self.world_size, self.resampled = rank, world_size, resampled
        self.shuffle_buffer, self.on_error = shuffle_buffer, on_error
        self.start, self.resume = (int(start[0]), int(start[1])), resume
        SkipLog(on_error)  # validates the setting before any worker starts
        if not resampled and len(self.urls) < world_size:
            raise VitsslError(f"wds: {len(self.urls)} shards cannot be split over {world_size} "
                              f"ranks; write more shards or set data.resampled=true")

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
        errors = CarriedSkips(self.on_error)  # logged by the main process (counted)
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


def first_sample(urls: list[str]) -> dict[str, Any]:
    """The first readable sample in shard order (to tell labelled data from unlabelled)."""
    errors = SkipLog("skip")
    for url in urls:
        for sample in shard_samples(url, errors):
            return sample
    raise VitsslError(f"wds: no readable samples in {len(urls)} shard(s) (e.g. {urls[0]})")


_LABELLED: dict[tuple, bool] = {}


def _stamp(url: str) -> tuple:
    """What identifies a shard's contents cheaply: the URL, and size and mtime when local."""
    if _is_remote(url):
        return (url,)
    stat = Path(url.removeprefix("file://").removeprefix("file:")).stat()
    return url, stat.st_size, stat.st_mtime_ns


def is_labelled(urls: list[str]) -> bool:
    """Whether the first readable sample has a ``cls`` member.

    Remembered per process for unchanged shards, so a run that asks before
    and while building its pipeline opens the first shard once.
    """
    key = tuple(_stamp(url) for url in urls)
    if key not in _LABELLED:
        _LABELLED.clear()  # one stream per run: keep only the latest answer
        _LABELLED[key] = "cls" in first_sample(urls)
    return _LABELLED[key]
