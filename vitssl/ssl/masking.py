"""Which patches a masked student hides: MAE's random masking, BEiT's block-wise masking.

:func:`block_boxes` (painted by :func:`block_mask`) is the algorithm of BEiT
(Bao et al. 2022, microsoft/unilm ``beit/masking_generator.py``) as iBOT's
``ImageFolderMask`` runs it (``pred_shape='block'``): until ``num_masked``
patches are masked, draw a rectangle of area ``U(low, remaining)`` and aspect
ratio ``exp(U(log a, log b))`` with ``low = (min(H, W) // 3) ** 2``, at a
random place, strictly smaller than the grid on both sides; keep it when it
masks between 1 and ``remaining`` new patches; stop after 10 failed draws in
a row. The mask is a union of rectangles with at most ``floor(num_masked)``
patches. :func:`random_mask` (``pred_shape='rand'``) masks ``int(num_masked)``
patches uniformly.

:func:`draw_ratio` is iBOT's ``get_pred_ratio``: each ``ratio`` jittered by
``U(-var, var)``, then one of them chosen. Every draw comes from a
``random.Random`` passed in, so a mask is a function of its seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch

from vitssl.ssl.batch import per_sample_uniform


def draw_ratio(ratios: Sequence[float], variances: Sequence[float],
               rng: random.Random) -> float:
    """One masking ratio: each ``ratios[i]`` drawn from ``U(r - v, r + v)``, then one chosen."""
    values = [rng.uniform(r - v, r + v) if v > 0 else r
              for r, v in zip(ratios, variances, strict=True)]
    return rng.choice(values) if len(values) > 1 else values[0]


def block_boxes(grid: tuple[int, int], num_masked: float, rng: random.Random,
                aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3)
                ) -> list[tuple[int, int, int, int]]:
    """The rectangles (top, left, height, width) BEiT's block masking places, in order."""
    height, width = grid
    mask = np.zeros((height, width), dtype=bool)
    log_lo, log_hi = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    low = (min(height, width) // 3) ** 2
    boxes, count = [], 0
    while count < num_masked:
        budget = num_masked - count
        delta = 0
        for _ in range(10):
            area = rng.uniform(low, budget)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= budget:
                    mask[top:top + h, left:left + w] = True
                    boxes.append((top, left, h, w))
                    delta += new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return boxes


def block_mask(grid: tuple[int, int], num_masked: float, rng: random.Random,
               aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> np.ndarray:
    """A (H, W) bool mask: the union of :func:`block_boxes`, at most ``num_masked`` patches."""
    mask = np.zeros(grid, dtype=bool)
    for top, left, h, w in block_boxes(grid, num_masked, rng, aspect_ratio):
        mask[top:top + h, left:left + w] = True
    return mask


def random_mask(grid: tuple[int, int], num_masked: float, rng: random.Random) -> np.ndarray:
    """A (H, W) bool mask of ``int(num_masked)`` patches chosen uniformly."""
    height, width = grid
    mask = np.zeros(height * width, dtype=bool)
    mask[rng.sample(range(height * width), int(num_masked))] = True
    return mask.reshape(height, width)


def random_masking(batch_size: int, num_patches: int, keep: int, device: torch.device,
                   seeds: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's masking: (ids_keep (B, keep), ids_restore (B, N)) from argsort of uniform noise,
    one draw per sample seed (:func:`~vitssl.ssl.batch.per_sample_uniform`)."""
    noise = per_sample_uniform(batch_size, (num_patches,), device, seeds)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    return ids_shuffle[:, :keep], ids_restore
