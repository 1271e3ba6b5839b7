"""The images an analysis looks at: evenly spaced samples of a map-style dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from vitssl.data.bands import Bands
from vitssl.data.source import open_dataset
from vitssl.data.transforms import normalize
from vitssl.errors import VitsslError


def load_images(spec: str, count: int, size: tuple[int, int], mean: tuple[float, ...],
                std: tuple[float, ...],
                channels: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels in [0, 1], normalised images), both (n, C, H, W), n = min(count, len(data)):
    resized and centre-cropped to ``size``, spread evenly over the dataset (not one class);
    ``channels``: the bands kept (``data.channels``)."""
    dataset = open_dataset(spec, "train")
    total = len(dataset)
    if total == 0:
        raise VitsslError(f"'{spec}' holds no images")
    n = min(count, total)
    indices = torch.linspace(0, total - 1, n).round().long().tolist()
    transform = v2.Compose([Bands(channels), v2.Resize(max(size), antialias=True),
                            v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True)])
    pixels = torch.stack([transform(dataset[i][0]) for i in indices])
    return pixels, normalize(pixels, mean, std)
