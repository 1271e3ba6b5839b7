"""``wds:URLS``: reading webdataset tar shards, sample by sample (opened with ``gopen``).

A sample is the group of consecutive tar members sharing a key: a ``jpg``
(``jpeg``, ``png``, ``webp``, ``tiff``, ``npy``) image and, when labelled, a ``cls``
ASCII integer.
A sample without either, and the one being read when a shard turns out
truncated or unreadable, are skipped (:class:`~vitssl.data.decode.SkipLog`).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from vitssl.data.decode import CorruptImage, SkipLog, decode_image
from vitssl.errors import VitsslError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "tiff", "tif", "npy")


def _local(url: str) -> Path | None:
    """The path of a local shard; None for pipes and remote URLs."""
    if url.startswith("pipe:") or "://" in url and not url.startswith("file:"):
        return None
    return Path(url.removeprefix("file://").removeprefix("file:"))


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
        path = _local(url)
        if path is not None and not path.is_file():
            raise VitsslError(f"wds: shard {url} does not exist")
    return urls


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


def decode_sample(sample: dict[str, Any], labelled: bool,
                  layout: str = "auto") -> tuple[Any, int]:
    """(RGB PIL image or bands, label or -1); :class:`CorruptImage` when unusable."""
    where = f"{sample['__url__']} key {sample['__key__']}"
    ext = next((k for k in IMAGE_KEYS if k in sample), None)
    if ext is None:
        found = ", ".join(k for k in sample if not k.startswith("__"))
        raise CorruptImage(f"{where}: no image member (have: {found or 'nothing'}; "
                           f"need one of {', '.join(IMAGE_KEYS)})")
    image = decode_image(sample[ext], f"{where}.{ext}", layout)
    if not labelled:
        return image, -1
    if "cls" not in sample:
        raise CorruptImage(f"{where}: no cls member in labelled data")
    try:
        return image, int(sample["cls"].decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise CorruptImage(f"{where}: cls {sample['cls'][:20]!r} is not an integer") from None


def readable_samples(pattern: str, skips: SkipLog) -> Iterator[dict[str, Any]]:
    """The samples of every shard, in order, whose image decodes (for ``vitssl shard``)."""
    for url in expand_urls(pattern):
        for sample in shard_samples(url, skips):
            try:
                decode_sample(sample, labelled=False)
            except CorruptImage as exc:
                skips.skip(str(exc))
                continue
            yield sample


def first_sample(urls: list[str]) -> dict[str, Any]:
    """The first readable sample in shard order (to tell labelled data from unlabelled)."""
    errors = SkipLog("skip")
    for url in urls:
        for sample in shard_samples(url, errors):
            return sample
    raise VitsslError(f"wds: no readable samples in {len(urls)} shard(s) (e.g. {urls[0]})")


def is_labelled(urls: list[str]) -> bool:
    """Whether the first readable sample has a ``cls`` member.

    Remembered for the latest unchanged shards (URL, and size and mtime when
    local), so a run that asks before building its pipeline opens them once.
    """
    return _has_cls(tuple(_stamp(url) for url in urls))


def _stamp(url: str) -> tuple:
    path = _local(url)
    return (url,) if path is None else (url, path.stat().st_size, path.stat().st_mtime_ns)


@lru_cache(maxsize=1)
def _has_cls(stamps: tuple[tuple, ...]) -> bool:
    return "cls" in first_sample([stamp[0] for stamp in stamps])
