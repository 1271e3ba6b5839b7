"""Position embeddings: resampling learned ones to another grid, and fixed 2-D sin-cos ones."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange

from vitssl.errors import VitsslError

POS_EMBEDS = ("learned", "sincos")


def resample_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int],
                       new_grid: tuple[int, int], num_prefix: int = 0,
                       mode: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """(1, prefix + h*w, D) -> (1, prefix + H*W, D); prefix (class-token) entries kept apart.

    The patch entries are laid out as the ``old_grid`` image, interpolated to
    ``new_grid`` (non-square grids allowed) and flattened back row-major.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    h, w = old_grid
    if patches.shape[1] != h * w:
        raise ValueError(f"position embedding holds {patches.shape[1]} patch entries, "
                         f"not {h}x{w}")
    grid = rearrange(patches, "1 (h w) d -> 1 d h w", h=h, w=w).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode,
                         antialias=antialias and mode in ("bilinear", "bicubic"))
    grid = rearrange(grid, "1 d h w -> 1 (h w) d")
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


@functools.lru_cache(maxsize=32)
def _sincos_float64(dim: int, rows: int, cols: int) -> torch.Tensor:
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64),
                          torch.arange(cols, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (c.flatten(), r.flatten()):  # first half: the column, second: the row
        angles = coord[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


def sincos_pos_embed(dim: int, grid: tuple[int, int], num_prefix: int = 0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (prefix + rows * cols, dim), float32.

    MAE's ``get_2d_sincos_pos_embed``: for patch (row, col), channels
    ``[sin(col w), cos(col w), sin(row w), cos(row w)]`` with
    ``w_i = 10000 ** (-i / (dim / 4))``, ``i < dim / 4``; patches row-major,
    the ``num_prefix`` (class-token) rows zeros. Computed in float64 for any grid.
    """
    if dim < 4 or dim % 4:
        raise VitsslError(f"sin-cos position embeddings need a width that is a multiple of 4, "
                          f"got {dim}")
    rows, cols = int(grid[0]), int(grid[1])
    table = _sincos_float64(int(dim), rows, cols)
    if num_prefix:
        table = torch.cat([table.new_zeros(num_prefix, dim), table])
    return table.float()  # a fresh copy: the cached float64 table is never handed out
