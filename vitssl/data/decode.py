"""Image files and bytes -> RGB PIL images, with one error type for unreadable ones."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from vitssl.errors import VitsslError

# File suffixes read as images; the first three are stored in shards as they are.
SHARD_EXTS = ("jpg", "png", "webp")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


class CorruptImage(VitsslError):
    """An image file or shard member that cannot be decoded (skippable in long runs)."""


def decode_image(data: bytes, name: str) -> Image.Image:
    """Fully decode ``data`` to an RGB image; :class:`CorruptImage` naming ``name`` if it fails."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        detail = re.sub(r" ?<[^<>]* at 0x[0-9a-f]+>", "", str(exc).splitlines()[0]) \
            if str(exc) else "no detail"
        raise CorruptImage(f"cannot decode image {name}: {type(exc).__name__}: {detail}") \
            from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with 16-bit, 32-bit and float images scaled to 8 bits (PIL would clip them)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0.0)
        if image.mode.startswith("I;16") or 255 < top <= 65535:
            values = values / 257.0
        elif top > 65535:
            values = values * (255.0 / top)
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Read and decode an image file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptImage(f"cannot read image {path}: {exc.strerror or exc}") from None
    return decode_image(data, str(path))


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def shard_ext(path: Path) -> str | None:
    """The shard key a file's bytes can be stored under unchanged, or None to re-encode."""
    ext = path.suffix.lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    return ext if ext in SHARD_EXTS else None


class ImageFiles(Dataset):
    """Map-style dataset over ``self.samples``: a list of (image path, label) pairs."""

    samples: list[tuple[Path, int]]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return load_image(path), label

    def raw(self, index: int) -> tuple[bytes, str, int] | None:
        """(file bytes, shard key, label) when the file can go into a shard unchanged."""
        path, label = self.samples[index]
        ext = shard_ext(path)
        return (path.read_bytes(), ext, label) if ext else None
