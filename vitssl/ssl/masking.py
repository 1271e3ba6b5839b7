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


def inverse_block_geometry(grid: tuple[int, int], num_visible: int,
                           block: int) -> tuple[int, int]:
    """(block side, block count) of :func:`inverse_block_mask`: the side capped by the grid,
    as many whole blocks as ``num_visible`` holds (at least one)."""
    side = max(1, min(int(block), *grid))
    return side, max(1, num_visible // side ** 2)


def inverse_block_draws(grid: tuple[int, int], num_visible: int, block: int) -> int:
    """How many uniforms one :func:`inverse_block_mask` row reads: two per block, one per
    patch."""
    return 2 * inverse_block_geometry(grid, num_visible, block)[1] + grid[0] * grid[1]


def inverse_block_mask(noise: torch.Tensor, grid: tuple[int, int], num_visible: int,
                       block: int) -> torch.Tensor:
    """data2vec 2.0's inverse block masking: the grid indices (n, ``num_visible``), ascending,
    of the patches each row of ``noise`` keeps *visible*.

    ``noise`` (n, :func:`inverse_block_draws`) holds uniforms in [0, 1) (per-sample draws:
    :func:`~vitssl.ssl.batch.per_sample_uniform`). ``num_visible // block²`` blocks of
    ``block × block`` patches are placed wholly inside the grid at random places; every
    patch is scored by its Chebyshev distance to the nearest block's centre plus half a
    uniform draw, and the ``num_visible`` lowest scores are kept. So every block is kept
    whole, and the remaining count grows ring by ring around the blocks: every kept patch
    touches (8-neighbourhood) a block, and the count is exact. Runs vectorised wherever
    ``noise`` lies, without reading it back.

    fairseq's ``compute_block_mask_2d(inverse_mask=True)`` instead places
    ``int(N (1 - mask_prob + mask_prob_adjust) / block²)`` centres with replacement,
    clamps their blocks at the border, then drops or adds random patches to reach the
    count; blocks that wholly fit and growth from their borders keep the blocks whole on
    grids as small as 7 × 7.
    """
    height, width = grid
    if not 0 < num_visible <= height * width:
        raise ValueError(f"num_visible must lie in [1, {height * width}], got {num_visible}")
    side, count = inverse_block_geometry(grid, num_visible, block)
    noise = noise.float()
    half = (side - 1) / 2
    centre_y = (noise[:, :count] * (height - side + 1)).floor() + half  # (n, count)
    centre_x = (noise[:, count:2 * count] * (width - side + 1)).floor() + half
    rows = torch.arange(height, device=noise.device, dtype=noise.dtype).repeat_interleave(width)
    cols = torch.arange(width, device=noise.device, dtype=noise.dtype).repeat(height)
    distance = torch.maximum((rows - centre_y[..., None]).abs(),
                             (cols - centre_x[..., None]).abs()).amin(dim=1)  # (n, N)
    score = distance + 0.5 * noise[:, 2 * count:2 * count + height * width]
    return score.topk(num_visible, dim=1, largest=False).indices.sort(dim=1).values
