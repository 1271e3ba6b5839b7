"""Image transforms (torchvision v2): pretraining augmentation and evaluation resizing.

Both return float pixels in [0, 1], (C, H, W) for ``image_size`` an int (H = W)
or (H, W), or with ``as_uint8`` the same pixels as uint8 (:func:`to_float`
finishes them). Normalisation happens when batches are assembled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from vitssl.config import image_hw
from vitssl.data.bands import Bands
from vitssl.data.decode import EncodedImage
from vitssl.errors import VitsslError

# A crop at least this many times the output (per side) is reduced before it is resampled.
REDUCE_FROM = 4
# ...keeping at least this many source pixels per output pixel (PIL's reducing_gap).
REDUCING_GAP = 2.0


def pretrain_transform(image_size: int | tuple[int, int],
                       crop_scale: tuple[float, float] = (0.35, 1.0), hflip: bool = True,
                       augment: bool = True,
                       crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                       translate: float = 0.0, *, as_uint8: bool = False,
                       channels: Sequence[int] | None = None) -> Callable:
    """Random resized crop, shift and horizontal flip (plain resize when ``augment`` is off).

    ``translate``: the largest random shift after the crop, as a fraction of
    the side (uncovered pixels black; 0: none). ``crop_ratio`` is relative to
    the output's own aspect (W/H). Randomness comes from torch's global RNG
    (callers seed it per batch). ``channels``: the bands kept (:class:`Bands`).
    """
    if not augment:
        return eval_transform(image_size, as_uint8=as_uint8, channels=channels)
    height, width = image_hw(image_size)
    ratio = tuple(r * width / height for r in crop_ratio)
    return PretrainTransform((height, width), tuple(crop_scale), ratio, translate, hflip,
                             as_uint8, channels)


class PretrainTransform:
    """Random resized crop, then shift and flip: of a decoded image, or of an image file.

    An :class:`~vitssl.data.decode.EncodedImage` gets the crop box a decoded image
    would (the same RNG calls, on its header's size); a crop under
    :data:`REDUCE_FROM` times the output per side is then resized bit for bit as
    a decoded one, a larger one decoded at a reduced scale where the format
    allows and resampled by PIL (pixels within a grey level on average).
    """

    takes_encoded = True

    def __init__(self, size: tuple[int, int], crop_scale: tuple[float, float],
                 crop_ratio: tuple[float, float], translate: float, hflip: bool,
                 as_uint8: bool, channels: Sequence[int] | None = None) -> None:
        self.size = size
        self.crop = v2.RandomResizedCrop(size, scale=crop_scale, ratio=crop_ratio,
                                         antialias=True)
        after: list = []
        if translate > 0:
            after.append(v2.RandomAffine(degrees=0.0, translate=(translate, translate)))
        if hflip:
            after.append(v2.RandomHorizontalFlip())
        last = [] if as_uint8 else [v2.ToDtype(torch.float32, scale=True)]
        bands = Bands(channels)
        self.decoded = v2.Compose([bands, self.crop, *after, *last])
        self.after = v2.Compose([*after, bands, *last])

    def __call__(self, image: Any) -> torch.Tensor:
        if not isinstance(image, EncodedImage):
            return self.decoded(image)
        return self.after(self.crop_file(image))

    def crop_file(self, encoded: EncodedImage) -> torch.Tensor:
        """The random resized crop of an image file, (C, H, W) uint8, C = 1 for grey files."""
        box = self.crop.make_params([encoded.header])  # reads only the size
        top, left, h, w = box["top"], box["left"], box["height"], box["width"]
        out_h, out_w = self.size
        factor = min(w / out_w, h / out_h)
        if factor < REDUCE_FROM:
            image, _ = encoded.decode()
            crop = image.crop((left, top, left + w, top + h)).convert("RGB")
            return v2.functional.resize(v2.functional.to_image(crop), [out_h, out_w],
                                        antialias=True)
        image, divisor = encoded.decode(int(factor // REDUCING_GAP))
        x0, y0, x1, y1 = left / divisor, top / divisor, (left + w) / divisor, (top + h) / divisor
        # Cut the whole pixels the box touches first, so that (as torchvision's crop) the
        # filter reads nothing from beyond them; then resample the box's exact extent.
        cut = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
        small = image.crop(cut).resize((out_w, out_h), Image.Resampling.BILINEAR,
                                       box=(x0 - cut[0], y0 - cut[1], x1 - cut[0], y1 - cut[1]),
                                       reducing_gap=REDUCING_GAP)
        return v2.functional.to_image(small)


def eval_transform(image_size: int | tuple[int, int], crop_fraction: float = 1.0, *,
                   as_uint8: bool = False, channels: Sequence[int] | None = None) -> Callable:
    """Resize the short side to cover ``image_size`` (H, W), then center-crop to it.

    ``channels``: the bands kept (:class:`~vitssl.data.bands.Bands`).
    """
    height, width = image_hw(image_size)
    side = max(height, width)
    resize = max(side, round(side / crop_fraction))
    steps = [Bands(channels), v2.Resize(resize, antialias=True),
             v2.CenterCrop((height, width))]
    if not as_uint8:
        steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels from an ``as_uint8`` transform -> float in [0, 1] (the skipped last step)."""
    return v2.functional.to_dtype(pixels, torch.float32, scale=True)


def normalize(pixels: torch.Tensor, mean: tuple[float, ...],
              std: tuple[float, ...]) -> torch.Tensor:
    """(..., C, H, W) pixels in [0, 1] -> normalised, one mean and std per channel."""
    channels = pixels.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise VitsslError(f"data.mean and data.std need one value per channel: the images have "
                          f"{channels}, got {len(mean)} and {len(std)} (data.mean=auto "
                          f"estimates them)")
    m = pixels.new_tensor(mean).view(channels, 1, 1)
    s = pixels.new_tensor(std).view(channels, 1, 1)
    return (pixels - m) / s
