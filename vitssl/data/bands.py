"""Images beyond 8-bit RGB: 16-bit and multi-band files, ``.npy`` arrays, the bands a run uses.

Two kinds of decoded image flow through the pipeline:

- a *picture*: a PIL image or a uint8 tensor, 8 bits per sample; grey pictures
  become RGB (3 channels), as they always have;
- *bands*: a float32 tensor (C, H, W) holding every band of a file, integers
  scaled to [0, 1] by the file's bit depth (a 12-bit TIFF by 4095, a 16-bit
  PNG by 65535), floating-point arrays as stored. 16-bit grey PNG and TIFF,
  TIFFs whose samples are not 8-bit grey, RGB or RGBA (read with tifffile) and
  ``.npy`` arrays (H, W), (C, H, W) or (H, W, C) are bands.

:class:`Bands` is the first step of every transform: pictures to RGB, then
``data.channels`` selects and orders bands.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from vitssl.errors import VitsslError

LAYOUTS = ("auto", "chw", "hwc")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
DEEP_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass(frozen=True)
class ImageFormat:
    """What a source's images hold: channels as decoded, bits per sample, colour operations."""

    channels: int = 3
    bits: int = 8
    color: bool = True  # colour jitter, greyscale and solarisation make sense (RGB pictures)


RGB = ImageFormat()


def tifffile_module() -> Any:
    try:
        import tifffile
    except ImportError:
        raise VitsslError("reading multi-band or 16-bit TIFF needs tifffile: "
                          "pip install tifffile") from None
    return tifffile


def is_deep(data: bytes, name: str) -> bool:
    """Whether a file decodes to bands (see the module docstring), from its first bytes."""
    if name.lower().endswith(".npy"):
        return True
    if data[:4] in TIFF_MAGIC:
        try:
            import tifffile
        except ImportError:  # PIL reads 8-bit and 16-bit grey TIFFs; others name tifffile
            return False
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages[0]
                return page.bitspersample != 8 or page.samplesperpixel not in (1, 3, 4) \
                    or len(tif.series[0].shape) > 2 + (page.samplesperpixel > 1)
        except Exception:  # noqa: BLE001 - unreadable: PIL's attempt reports it as corrupt
            return False
    return False


def file_format(data: bytes, name: str, layout: str = "auto") -> ImageFormat:
    """The :class:`ImageFormat` of one file, as decoded (bands, or an RGB picture)."""
    if is_deep(data, name):
        array, bits = _array(data, name, layout)
        return ImageFormat(array.shape[0], bits or array.dtype.itemsize * 8, False)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 16:
        return ImageFormat(1, 16, False)
    return RGB


def scaled(array: np.ndarray, bits: int | None = None) -> torch.Tensor:
    """An integer array scaled to [0, 1] by ``bits`` (default: its dtype's), floats as stored."""
    if array.dtype.kind in "ui":
        top = 2 ** (bits or array.dtype.itemsize * 8) - 1
        return torch.from_numpy(array.astype(np.float32) / np.float32(top))
    if array.dtype.kind in "bf":
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    raise VitsslError(f"cannot read arrays of dtype {array.dtype}: expected integers or floats")


def band_axis(shape: Sequence[int], name: str, layout: str = "auto") -> str:
    """``"chw"`` or ``"hwc"`` for a 3-d array: declared, or the axis smaller than the other two."""
    if layout not in LAYOUTS:
        raise VitsslError(f"data.options.layout must be one of {', '.join(LAYOUTS)}, "
                          f"got {layout!r}")
    if layout != "auto":
        return layout
    first, middle, last = shape
    if first < min(middle, last):
        return "chw"
    if last < min(first, middle):
        return "hwc"
    raise VitsslError(f"cannot tell which axis of {name} (shape {tuple(shape)}) holds the "
                      f"bands; set data.options.layout=chw or hwc")


def _array(data: bytes, name: str, layout: str) -> tuple[np.ndarray, int | None]:
    """(the file's array as (C, H, W), its bits per sample when the file says)."""
    if name.lower().endswith(".npy"):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise VitsslError(f"cannot read {name}: {exc}") from None
        bits = None
    else:
        with tifffile_module().TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]  # bands as samples ("YXS", "SYX") or as pages ("QYX")
            array, bits = series.asarray(), tif.pages[0].bitspersample
            layout = "hwc" if series.axes.endswith("S") else "chw"
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        if band_axis(array.shape, name, layout) == "hwc":
            array = array.transpose(2, 0, 1)
    else:
        raise VitsslError(f"{name} holds an array of shape {array.shape}; expected (H, W), "
                          f"(C, H, W) or (H, W, C)")
    return np.ascontiguousarray(array), bits


def read_bands(data: bytes, name: str, layout: str = "auto") -> torch.Tensor:
    """A deep file's bands, float32 (C, H, W) (see the module docstring)."""
    return scaled(*_array(data, name, layout))


def grey_bands(image: Image.Image) -> torch.Tensor:
    """A 16-bit, 32-bit integer or float grey PIL image as bands (1, H, W)."""
    array = np.asarray(image)
    if image.mode == "F":
        return scaled(array)[None]
    bits = 16 if image.mode.startswith("I;16") or array.max(initial=0) <= 65535 else 32
    return scaled(array.astype(np.uint32 if bits == 32 else np.uint16), bits)[None]


def check_png_depth(data: bytes, name: str) -> None:
    """Refuse a 16-bit colour PNG, which PIL would read as 8-bit without a word."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[24] == 16 \
            and data[25] in (2, 6):
        width, height = struct.unpack(">II", data[16:24])
        raise VitsslError(f"{name}: a 16-bit colour PNG ({width}x{height}) cannot be read "
                          f"without losing its low 8 bits; store it as TIFF or .npy")


def count_channels(image: Any) -> int:
    """Channels an image has after :class:`Bands` without a selection."""
    if isinstance(image, torch.Tensor):
        return 3 if image.dtype == torch.uint8 and image.shape[-3] == 1 else image.shape[-3]
    return 3


def format_of(image: Any) -> ImageFormat:
    """The :class:`ImageFormat` of one decoded image (bands: 32-bit floats)."""
    if isinstance(image, torch.Tensor) and image.dtype != torch.uint8:
        return ImageFormat(image.shape[-3], 32, False)
    return RGB


class Bands:
    """Image -> (C, H, W) tensor: pictures as RGB uint8, bands as they are; then ``channels``.

    ``channels``: indices of the bands to keep, in order (``data.channels``); None keeps all.
    """

    def __init__(self, channels: Sequence[int] | None = None) -> None:
        self.channels = list(channels) if channels is not None else None
        self.picture = v2.Compose([v2.ToImage(), v2.RGB()])

    def __call__(self, image: Any) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or (image.dtype == torch.uint8
                                                   and image.shape[-3] == 1):
            image = self.picture(image)  # grey pictures become RGB
        if self.channels is None:
            return image
        bands = image.shape[-3]
        if max(self.channels) >= bands:
            raise VitsslError(f"data.channels names band {max(self.channels)}, but the images "
                              f"have {bands} (0 to {bands - 1})")
        return image[..., self.channels, :, :]
