"""``vitssl shard``: write webdataset tar shards from any data spec.

Sample ``i`` (in the dataset's order) gets key ``%08d`` of ``i``, its image
under ``jpg``/``png``/``webp``, when labelled its label as ASCII under
``cls``, and its provenance as ``json``: ``{"source": ...}``, the image file's
path, or ``SPEC#i`` for in-memory data (``builtin:digits:train#17``). Image
files already in one of those formats are copied byte for byte once they
decode; anything else (other file types, in-memory images of ``builtin:``
data) is encoded once as PNG, which is lossless. ``wds:`` input is re-sharded
member for member; a sample without a ``json`` member gets
``{"source": "URL#KEY"}``. Images that do not decode (and unreadable files or
shards) are skipped, logged and counted, as training does; the final line
says how many. Each shard is written to ``NAME.partial`` and renamed when
complete, so an interrupted run never leaves a half-written shard under a
final name.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitssl.data.decode import CorruptImage, ImageFiles, decode_image
from vitssl.data.skips import SkipLog
from vitssl.data.sources import open_dataset
from vitssl.data.spec import DataSpec, parse_spec
from vitssl.errors import VitsslError


def encode_png(image: Any) -> bytes:
    """A PIL image or uint8 tensor (C, H, W) as PNG bytes."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        if array.dtype != np.uint8:
            raise VitsslError(f"cannot shard images of dtype {array.dtype}; expected uint8")
        array = array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0))
        image = Image.fromarray(array)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _provenance(source: str) -> bytes:
    return json.dumps({"source": source}).encode()


def _map_samples(spec: DataSpec, skips: SkipLog) -> tuple[Iterator[dict[str, Any]], int]:
    dataset = open_dataset(spec)
    raw = getattr(dataset, "raw", None)
    paths = dataset.samples if isinstance(dataset, ImageFiles) else None
    name = f"{spec.kind}:{spec.target}:{spec.split or 'train'}"

    def samples() -> Iterator[dict[str, Any]]:
        for index in range(len(dataset)):
            source = str(paths[index][0]) if paths is not None else f"{name}#{index}"
            try:
                stored = raw(index) if raw is not None else None
                if stored is not None:
                    data, ext, label = stored
                    decode_image(data, source)  # copied unchanged, but only if it decodes
                else:
                    image, label = dataset[index]
                    data, ext = encode_png(image), "png"
            except CorruptImage as exc:
                skips.skip(str(exc))
                continue
            except OSError as exc:
                skips.skip(f"cannot read image {source}: {exc.strerror or exc}")
                continue
            sample = {"__key__": f"{index:08d}", ext: data, "json": _provenance(source)}
            if int(label) >= 0:
                sample["cls"] = str(int(label)).encode()
            yield sample

    return samples(), len(dataset)


def _stream_samples(spec: DataSpec, skips: SkipLog) -> Iterator[dict[str, Any]]:
    from vitssl.data.wds import IMAGE_KEYS, expand_urls, shard_samples

    for url in expand_urls(spec.target):
        for sample in shard_samples(url, skips):
            where = f"{url} key {sample['__key__']}"
            ext = next((k for k in IMAGE_KEYS if k in sample), None)
            if ext is None:
                skips.skip(f"{where}: no image member")
                continue
            try:
                decode_image(sample[ext], f"{where}.{ext}")
            except CorruptImage as exc:
                skips.skip(str(exc))
                continue
            out = {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}
            out.setdefault("json", _provenance(f"{url}#{sample['__key__']}"))
            yield out


def _shard_path(pattern: str, number: int) -> Path:
    try:
        return Path(pattern % number)
    except (TypeError, ValueError):
        raise VitsslError(f"--output '{pattern}' needs one integer field for the shard number, "
                          f"e.g. 'out/shard-%06d.tar'") from None


class _Progress:
    """A tqdm bar on a terminal; otherwise a line per shard at most every 10 s."""

    def __init__(self, total: int | None) -> None:
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="shard", unit="img", dynamic_ncols=True)
        self.last = time.monotonic()

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def shard_done(self, path: Path, done: int) -> None:
        if self.bar is None and time.monotonic() - self.last >= 10:
            print(f"shard: wrote {path} ({done} samples so far)", file=sys.stderr, flush=True)
            self.last = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_shards(spec: str | DataSpec, pattern: str, *, maxcount: int = 1000) -> list[Path]:
    """Write the samples of ``spec`` into shards ``pattern % 0, 1, ...``; return their paths."""
    from webdataset import TarWriter

    if maxcount < 1:
        raise VitsslError(f"--maxcount must be at least 1, got {maxcount}")
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if _shard_path(pattern, 0) == _shard_path(pattern, 1):
        raise VitsslError(f"--output '{pattern}' gives every shard the same name; "
                          f"use an integer field such as %06d")
    skips = SkipLog("skip")
    if spec.kind == "wds":
        samples, total = _stream_samples(spec, skips), None
    else:
        samples, total = _map_samples(spec, skips)
    progress = _Progress(total)
    written: list[Path] = []
    count = 0
    writer = handle = partial = None
    try:
        for sample in samples:
            if writer is None:
                final = _shard_path(pattern, len(written))
                final.parent.mkdir(parents=True, exist_ok=True)
                partial = final.with_name(final.name + ".partial")
                handle = open(partial, "wb")  # noqa: SIM115 - closed below or on error
                writer = TarWriter(handle, encoder=False, mtime=0.0)
                in_shard = 0
            writer.write(sample)
            in_shard += 1
            count += 1
            progress.update()
            if in_shard == maxcount:
                writer.close()
                handle.close()
                os.replace(partial, final)
                written.append(final)
                progress.shard_done(final, count)
                writer = handle = None
        if writer is not None:
            writer.close()
            handle.close()
            os.replace(partial, final)
            written.append(final)
            writer = handle = None
    finally:
        progress.close()
        if handle is not None:  # interrupted mid-shard: drop the partial file
            try:
                writer.close()
            finally:
                handle.close()
                partial.unlink(missing_ok=True)
    skipped = f"; skipped {skips.count} undecodable or unreadable sample(s)" \
        if skips.count else ""
    if not written:
        raise VitsslError(f"'{spec}' has no samples to write{skipped}")
    print(f"shard: wrote {count} samples in {len(written)} shard(s) "
          f"{written[0]} .. {written[-1]}{skipped}", file=sys.stderr)
    return written
