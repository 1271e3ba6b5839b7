"""Resample learned 1-D position embeddings to another patch grid (2-D interpolation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


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
