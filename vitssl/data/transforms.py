"""Image transforms (torchvision v2): pretraining augmentation and evaluation resizing.

Both return float pixels in [0, 1], shape (3, H, W) for ``image_size`` an int
(H = W) or (H, W) — or, with ``as_uint8``,
the same pixels as uint8 before the final scaling (4× less to send from a
DataLoader worker; :func:`to_float` finishes them). Normalisation happens when
batches are assembled, so objectives can also see the raw pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from vitssl.config import image_hw


def pretrain_transform(image_size: int | tuple[int, int],
                       crop_scale: tuple[float, float] = (0.35, 1.0), hflip: bool = True,
                       augment: bool = True,
                       crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                       translate: float = 0.0, *, as_uint8: bool = False) -> Callable:
    """Random resized crop, shift and horizontal flip (plain resize when ``augment`` is off).

    ``translate``: the largest shift, as a fraction of the side, of a random
    translation after the crop (uncovered pixels black); 0 turns it off.

    ``crop_ratio`` is the crop's width/height range relative to the output's
    own aspect (W/H), so a non-square output is cropped as a square one is.

    Randomness comes from torch's global RNG; callers seed it per batch.
    """
    if not augment:
        return eval_transform(image_size, as_uint8=as_uint8)
    height, width = image_hw(image_size)
    ratio = tuple(r * width / height for r in crop_ratio)
    steps: list = [v2.ToImage(), v2.RGB(),
                   v2.RandomResizedCrop((height, width), scale=tuple(crop_scale),
                                        ratio=ratio, antialias=True)]
    if translate > 0:
        steps.append(v2.RandomAffine(degrees=0.0, translate=(translate, translate)))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if not as_uint8:
        steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def eval_transform(image_size: int | tuple[int, int], crop_fraction: float = 1.0, *,
                   as_uint8: bool = False) -> Callable:
    """Resize the short side to cover ``image_size`` (H, W), then center-crop to it."""
    height, width = image_hw(image_size)
    side = max(height, width)
    resize = max(side, round(side / crop_fraction))
    steps = [v2.ToImage(), v2.RGB(), v2.Resize(resize, antialias=True),
             v2.CenterCrop((height, width))]
    if not as_uint8:
        steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels from an ``as_uint8`` transform -> float in [0, 1] (the skipped last step)."""
    return v2.functional.to_dtype(pixels, torch.float32, scale=True)


def normalize(pixels: torch.Tensor, mean: tuple[float, ...],
              std: tuple[float, ...]) -> torch.Tensor:
    """(..., 3, H, W) pixels in [0, 1] -> normalised."""
    m = pixels.new_tensor(mean).view(3, 1, 1)
    s = pixels.new_tensor(std).view(3, 1, 1)
    return (pixels - m) / s
