"""``vitssl shard``: write webdataset tar shards from any data spec (docs/data.md).

Sample ``i`` gets key ``%08d`` of ``i``, its image, its label as ASCII ``cls``
when labelled, and its provenance as ``json``. A stream (``wds:``) is
re-sharded member for member (``{"source": "URL#KEY"}`` when it has no ``json``).
"""

from __future__ import annotations

import io
import itertools
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

from vitssl.data.decode import CorruptImage, ImageFiles, SkipLog, decode_image
from vitssl.data.source import DataSpec, open_dataset, parse_spec
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


def encode_member(image: Any) -> tuple[bytes, str]:
    """(bytes, shard key): pictures as PNG, bands (a float tensor (C, H, W)) as ``.npy``."""
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        out = io.BytesIO()
        np.save(out, image.detach().cpu().numpy())
        return out.getvalue(), "npy"
    return encode_png(image), "png"


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
                    data, ext = encode_member(image)
            except CorruptImage as exc:
                skips.skip(str(exc))
                continue
            except OSError as exc:
                skips.skip(f"cannot read image {source}: {exc.strerror or exc}")
                continue
            sample = {"__key__": f"{index:08d}", ext: data,
                      "json": json.dumps({"source": source}).encode()}
            if int(label) >= 0:
                sample["cls"] = str(int(label)).encode()
            yield sample

    return samples(), len(dataset)


def _stream_samples(spec: DataSpec, skips: SkipLog) -> Iterator[dict[str, Any]]:
    for sample in spec.source.samples(spec.target, skips):
        out = {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}
        where = f"{sample.get('__url__', spec)}#{sample['__key__']}"
        out.setdefault("json", json.dumps({"source": where}).encode())
        yield out


def _shard_path(pattern: str, number: int) -> Path:
    try:
        return Path(pattern % number)
    except (TypeError, ValueError):
        raise VitsslError(f"--output '{pattern}' needs one integer field for the shard number, "
                          f"e.g. 'out/shard-%06d.tar'") from None


def _write(samples: Iterator[dict[str, Any]], pattern: str, maxcount: int,
           total: int | None) -> tuple[list[Path], int]:
    """(shard paths, sample count); progress on a tqdm bar, else a line at most every 10 s."""
    from tqdm import tqdm
    from webdataset import TarWriter

    bar = tqdm(total=total, desc="shard", unit="img", dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    written: list[Path] = []
    count, last, partial, samples = 0, time.monotonic(), None, iter(samples)
    try:
        while (first := next(samples, None)) is not None:
            final = _shard_path(pattern, len(written))
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(final.name + ".partial")
            with open(partial, "wb") as handle, \
                    TarWriter(handle, encoder=False, mtime=0.0) as writer:
                for sample in itertools.chain([first], itertools.islice(samples, maxcount - 1)):
                    writer.write(sample)
                    count += 1
                    bar.update(1)
            os.replace(partial, final)
            written.append(final)
            if bar.disable and time.monotonic() - last >= 10:
                print(f"shard: wrote {final} ({count} samples so far)", file=sys.stderr,
                      flush=True)
                last = time.monotonic()
    finally:
        bar.close()
        if partial is not None:
            partial.unlink(missing_ok=True)
    return written, count


def write_shards(spec: str | DataSpec, pattern: str, *, maxcount: int = 1000) -> list[Path]:
    """Write the samples of ``spec`` into shards ``pattern % 0, 1, ...``; return their paths."""
    if maxcount < 1:
        raise VitsslError(f"--maxcount must be at least 1, got {maxcount}")
    spec = parse_spec(spec)
    if _shard_path(pattern, 0) == _shard_path(pattern, 1):
        raise VitsslError(f"--output '{pattern}' gives every shard the same name; "
                          f"use an integer field such as %06d")
    skips = SkipLog("skip")
    if spec.source.streams:
        samples, total = _stream_samples(spec, skips), None
    else:
        samples, total = _map_samples(spec, skips)
    written, count = _write(samples, pattern, maxcount, total)
    skipped = f"; skipped {skips.count} undecodable or unreadable sample(s)" \
        if skips.count else ""
    if not written:
        raise VitsslError(f"'{spec}' has no samples to write{skipped}")
    print(f"shard: wrote {count} samples in {len(written)} shard(s) "
          f"{written[0]} .. {written[-1]}{skipped}", file=sys.stderr)
    return written
