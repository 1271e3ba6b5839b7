"""Multi-view transforms for objectives that see several crops of each image.

:meth:`vitssl.Objective.views` returns one of these; the pipeline runs it in the data
workers under its per-step seeding and delivers ``batch["views"][name]`` (B, V, C, S, S)
normalised and ``batch["view_pixels"][name]`` in [0, 1]. Crops, flips and blur apply to
any channel count; colour operations to three channels only (other images pass them).

:class:`MultiCrop` is DINO's recipe (Caron et al. 2021): two global crops and
``num_local`` local crops; flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) at
p 0.8, grayscale 0.2, Gaussian blur at p 1.0 / 0.1 on the two global views
and 0.5 on locals, solarisation 0.2 on the second global view. The blur's
sigma range (0.1, 2.0) is given for 224-px crops and scales with the crop
size, so a 16-px crop is blurred as little as a 224-px one is, relatively.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2

from vitssl.data.bands import Bands
from vitssl.errors import VitsslError

REFERENCE_SIZE = 224  # the crop size DINO's blur sigmas are given for


def data_allows(option: bool | None, data: Any, key: str) -> bool:
    """``option`` where set, else what the run's data declares for ``key`` (True without).

    ``key`` is ``"hflip"`` or ``"color"``: the :class:`~vitssl.config.DataConfig`
    fields a dataset fills in (:mod:`vitssl.data.source`; digits declare no colour,
    benchmarks/RESULTS.md, "Colour operations follow the data").
    """
    if option is not None:
        return bool(option)
    declared = getattr(data, key, None)
    return True if declared is None else bool(declared)


def _blur(size: int, p: float, sigma: tuple[float, float]) -> Callable:
    """Gaussian blur with probability ``p``; sigma scaled from 224 px to ``size``."""
    lo, hi = (s * size / REFERENCE_SIZE for s in sigma)
    kernel = max(3, 2 * math.ceil(3 * hi) + 1)
    return v2.RandomApply([v2.GaussianBlur(kernel, sigma=(lo, hi))], p=p)


def _view(size: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool,
          color: bool, blur_p: float, blur_sigma: tuple[float, float],
          solarize_p: float) -> Callable:
    """One augmented view: crop, flip, colour jitter and grayscale, blur, solarisation."""
    steps: list[Any] = [v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio),
                                             antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if color:
        steps.append(ThreeChannels([v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                                    v2.RandomGrayscale(0.2)]))
    steps.append(_blur(size, blur_p, blur_sigma))
    if color and solarize_p:
        steps.append(ThreeChannels([v2.RandomSolarize(128, p=solarize_p)]))
    return v2.Compose(steps)


class ThreeChannels:
    """Colour operations, applied to 3-channel images and skipped (no RNG drawn) for others."""

    def __init__(self, steps: list[Callable]) -> None:
        self.steps = v2.Compose(steps)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.steps(image) if image.shape[-3] == 3 else image


class MultiCrop:
    """One image -> ``{"global": (2, C, G, G), "local": (n, C, L, L)}`` uint8 crops.

    ``hflip`` and ``color`` turn the flip and the colour jitter / grayscale /
    solarisation off for data whose labels they would change (e.g. digits).
    """

    def __init__(self, global_size: int, local_size: int, num_local: int = 0, *,
                 global_scale: tuple[float, float] = (0.4, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.4),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: bool = True,
                 color: bool = True, blur_sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        if num_local < 0 or global_size < 1 or local_size < 1:
            raise VitsslError(f"multi-crop needs sizes >= 1 and num_local >= 0, got "
                              f"{global_size}, {local_size}, {num_local}")
        for name, (lo, hi) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0.0 < lo <= hi <= 1.0:
                raise VitsslError(f"multi-crop {name} must satisfy 0 < low <= high <= 1, "
                                  f"got {[lo, hi]}")
        self.num_local = num_local

        def view(size: int, scale: tuple[float, float], blur_p: float,
                 solarize_p: float) -> Callable:
            return _view(size, scale, ratio, hflip, color, blur_p, blur_sigma, solarize_p)

        self.global_views = [view(global_size, global_scale, 1.0, 0.0),
                             view(global_size, global_scale, 0.1, 0.2)]
        self.local_view = view(local_size, local_scale, 0.5, 0.0)
        self.prepare = Bands()

    def __call__(self, image: Any) -> dict[str, torch.Tensor]:
        image = self.prepare(image)
        out = {"global": torch.stack([t(image) for t in self.global_views])}
        if self.num_local:
            out["local"] = torch.stack([self.local_view(image) for _ in range(self.num_local)])
        return out


class TwoViews:
    """BYOL's two views (Grill et al. 2020; MoCo v3): one image -> ``{"pair": (2, 3, S, S)}``.

    Random resized crop at ``scale``, flip 0.5 (``hflip``), colour jitter
    (0.4, 0.4, 0.2, 0.1) at p 0.8, grayscale 0.2, Gaussian blur at p 1.0 on the
    first view and 0.1 on the second, solarisation at p 0.0 / 0.2 (``color``
    off drops jitter, grayscale and solarisation). ``blur_p`` and
    ``solarize_p`` hold each view's probabilities.
    """

    blur_p = (1.0, 0.1)
    solarize_p = (0.0, 0.2)

    def __init__(self, size: int, *, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: bool = True,
                 color: bool = True, blur_sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        lo, hi = scale
        if size < 1 or not 0.0 < lo <= hi <= 1.0:
            raise VitsslError(f"two views need size >= 1 and 0 < scale low <= high <= 1, got "
                              f"{size}, {[lo, hi]}")
        self.views = [_view(size, scale, ratio, hflip, color, b, blur_sigma, s)
                      for b, s in zip(self.blur_p, self.solarize_p, strict=True)]
        self.prepare = Bands()

    def __call__(self, image: Any) -> dict[str, torch.Tensor]:
        image = self.prepare(image)
        return {"pair": torch.stack([t(image) for t in self.views])}
