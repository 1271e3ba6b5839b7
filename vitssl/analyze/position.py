"""Position-embedding similarity (paper Fig. 7 centre, Fig. 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_similarity(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch position embeddings (N, D) or (1, N, D), row-major -> cosine similarity
    (rows, cols, rows, cols): entry [r, c] is the similarity of patch (r, c) with every
    patch, laid out on the grid. The class-token entry must already be excluded.
    """
    pos = pos_embed.detach().reshape(-1, pos_embed.shape[-1]).double()
    rows, cols = grid
    if pos.shape[0] != rows * cols:
        raise ValueError(f"{pos.shape[0]} position embeddings do not fill a {rows}x{cols} grid")
    unit = F.normalize(pos, dim=-1)
    return (unit @ unit.T).reshape(rows, cols, rows, cols)


def neighbour_contrast(similarity: torch.Tensor) -> dict[str, float]:
    """Mean similarity over pairs of distinct patches: 4-neighbours, all other pairs, pairs in
    the same row and pairs in the same column (the paper's row/column structure)."""
    rows, cols = similarity.shape[:2]
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    dr = (r.reshape(-1, 1) - r.reshape(1, -1)).abs()
    dc = (c.reshape(-1, 1) - c.reshape(1, -1)).abs()
    flat = similarity.reshape(rows * cols, rows * cols)
    pairs = {"neighbours": (dr + dc) == 1, "others": (dr + dc) > 1,
             "same_row": (dr == 0) & (dc > 0), "same_column": (dc == 0) & (dr > 0)}
    return {k: float(flat[m].mean()) if m.any() else float("nan") for k, m in pairs.items()}


def tile_grid(similarity: torch.Tensor) -> torch.Tensor:
    """(rows, cols, rows, cols) -> one 2-D canvas: tile (r, c) at grid position (r, c),
    tiles separated by one NaN row/column (drawn as a gap)."""
    rows, cols = similarity.shape[:2]
    canvas = torch.full((rows * (rows + 1) - 1, cols * (cols + 1) - 1), float("nan"),
                        dtype=similarity.dtype)
    for r in range(rows):
        for c in range(cols):
            top, left = r * (rows + 1), c * (cols + 1)
            canvas[top:top + rows, left:left + cols] = similarity[r, c]
    return canvas
