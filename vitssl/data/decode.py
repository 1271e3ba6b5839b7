"""Image files and bytes -> RGB PIL images or bands; unreadable ones raise :class:`CorruptImage`.

:class:`EncodedImage` holds a file parsed up to its header, for transforms that
decode only as much as their crop needs. :class:`SkipLog` skips unreadable
samples: counted and logged, or fatal with ``data.on_error=raise``.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vitssl.data.bands import (
    DEEP_MODES,
    TIFF_MAGIC,
    ImageFormat,
    check_png_depth,
    count_channels,
    file_format,
    grey_bands,
    is_deep,
    read_bands,
    tifffile_module,
)
from vitssl.errors import VitsslError

# File suffixes read as images; those in SHARD_KEYS are stored in shards as they are.
SHARD_KEYS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".tif": "tiff",
              ".tiff": "tiff", ".npy": "npy"}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm",
              ".npy")

log = logging.getLogger("vitssl.data")


class CorruptImage(VitsslError):
    """An image file or shard member that cannot be decoded (skippable in long runs)."""


class SkipLog:
    """Counts and logs skipped samples, or raises when ``on_error == "raise"``.

    With ``carry`` the messages are kept in ``messages`` instead: a batch built
    in a DataLoader worker carries them (``"_skip_messages"``) to the main
    process, where :func:`~vitssl.data.batches.counted` logs them.
    """

    def __init__(self, on_error: str = "skip", carry: bool = False) -> None:
        if on_error not in ("skip", "raise"):
            raise VitsslError(f"data.on_error must be 'skip' or 'raise', got '{on_error}'")
        self.raise_errors = on_error == "raise"
        self.count = 0
        self.messages: list[str] | None = [] if carry else None

    def skip(self, message: str) -> None:
        if self.raise_errors:
            raise VitsslError(f"{message} (set data.on_error=skip to skip such samples)")
        self.count += 1
        if self.messages is not None:
            self.messages.append(message)
        else:
            log.warning("skipping sample: %s", message)

    def take(self) -> int:
        """The count since the last call."""
        count, self.count = self.count, 0
        return count


def decode_image(data: bytes, name: str, layout: str = "auto") -> Image.Image | torch.Tensor:
    """Fully decode ``data``: an RGB picture, or bands (:mod:`vitssl.data.bands`).

    :class:`CorruptImage` naming ``name`` if it fails; ``layout``: of a ``.npy`` array.
    """
    try:
        if is_deep(data, name):
            return read_bands(data, name, layout)
        check_png_depth(data, name)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in DEEP_MODES:
                return grey_bands(image)
            return to_8bit(image).convert("RGB")
    except VitsslError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL and tifffile raise many types for bad data
        if data[:4] in TIFF_MAGIC:
            tifffile_module()  # a TIFF PIL cannot read: say what reads it
        raise _corrupt(name, exc) from None


def _corrupt(name: str, exc: Exception) -> CorruptImage:
    detail = re.sub(r" ?<[^<>]* at 0x[0-9a-f]+>", "", str(exc).splitlines()[0]) \
        if str(exc) else "no detail"
    return CorruptImage(f"cannot decode image {name}: {type(exc).__name__}: {detail}")


class EncodedImage:
    """An image file read and parsed up to its header: ``size`` known, pixels on demand."""

    def __init__(self, data: bytes, name: str) -> None:
        self.name = name
        try:
            self.header = Image.open(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
            raise _corrupt(name, exc) from None
        self.size: tuple[int, int] = self.header.size  # (width, height)

    def decode(self, reduce: int = 1) -> tuple[Image.Image, int]:
        """(8-bit pixels, scale divisor): grey stays ``"L"``, every other mode becomes RGB.

        ``reduce`` > 1 lets a JPEG decode at 1/2, 1/4 or 1/8 of its size, the
        largest at most ``reduce`` (PIL's ``draft``); other formats decode in full.
        """
        image, divisor = self.header, 1
        try:
            if reduce > 1:
                step = next(d for d in (8, 4, 2) if d <= reduce)
                width, height = image.size
                got = image.draft(image.mode, (max(1, width // step), max(1, height // step)))
                divisor = round(width / got[1][2]) if got else 1  # None: no such decoding
            image.load()
            return to_8bit(image), divisor
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
            raise _corrupt(self.name, exc) from None


def to_8bit(image: Image.Image) -> Image.Image:
    """Grey as ``"L"`` (16-bit, 32-bit and float scaled to 8 bits), everything else as RGB."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0.0)
        if image.mode.startswith("I;16") or 255 < top <= 65535:
            values = values / 257.0
        elif top > 65535:
            values = values * (255.0 / top)
        return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))
    return image if image.mode in ("L", "RGB") else image.convert("RGB")


def read_file(path: str | Path) -> bytes:
    """An image file's bytes; :class:`CorruptImage` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CorruptImage(f"cannot read image {path}: {exc.strerror or exc}") from None


def load_image(path: str | Path, layout: str = "auto") -> Image.Image | torch.Tensor:
    """Read and decode an image file (an RGB picture, or bands)."""
    return decode_image(read_file(path), str(path), layout)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


class ImageFiles(Dataset):
    """Map-style dataset over ``self.samples``: a list of (image path, label) pairs.

    Every image must have the channel count of the first (a one-line error names the
    first that does not); ``layout``: of ``.npy`` arrays (``data.options.layout``).
    """

    samples: list[tuple[Path, int]]
    layout: str = "auto"
    channels: int | None = None  # of the first image, once read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image | torch.Tensor, int]:
        path, label = self.samples[index]
        return self._checked(load_image(path, self.layout), path), label

    def encoded(self, index: int) -> tuple[EncodedImage | torch.Tensor, int]:
        """(the file parsed up to its header, label): decoding is left to the transform.

        Files holding bands are decoded here (the transform crops tensors).
        """
        path, label = self.samples[index]
        data = read_file(path)
        encoded = EncodedImage(data, str(path)) if not is_deep(data, str(path)) else None
        if encoded is None or encoded.header.mode in DEEP_MODES:
            return self._checked(decode_image(data, str(path), self.layout), path), label
        return self._checked(encoded, path), label

    def image_format(self) -> ImageFormat:
        """What the first image holds (:class:`~vitssl.data.bands.ImageFormat`)."""
        path = self.samples[0][0]
        try:
            return file_format(read_file(path), str(path), self.layout)
        except VitsslError:
            raise
        except Exception as exc:  # noqa: BLE001 - as decode_image
            raise _corrupt(str(path), exc) from None

    def _checked(self, image: Any, path: Path) -> Any:
        if self.channels is None:
            self.channels = self.image_format().channels
        got = 3 if isinstance(image, EncodedImage) else count_channels(image)
        if got != self.channels:
            raise VitsslError(f"{path} has {got} channels, but {self.samples[0][0]} has "
                              f"{self.channels}; every image of a dataset needs the same count")
        return image

    def raw(self, index: int) -> tuple[bytes, str, int] | None:
        """(file bytes, shard key, label) when the file can go into a shard unchanged."""
        path, label = self.samples[index]
        ext = SHARD_KEYS.get(path.suffix.lower())
        return (path.read_bytes(), ext, label) if ext else None
