"""Mean attention distance (paper Fig. 7 right, Fig. 11): for each block, head and image,
``Σ_j A[i, j] · d_ij`` averaged over the query patches i, by :data:`CONVENTION`."""

from __future__ import annotations

import torch

from vitssl.models.sizes import to_pair

CONVENTION = ("class-token query row and key column dropped without renormalising "
              "(attention to the class token counts as distance 0), as in the authors' code; "
              "d_ij = pixel distance between patch centres")


def patch_distances(grid: tuple[int, int], patch_size: int | tuple[int, int]) -> torch.Tensor:
    """(N, N) pixel distances between patch centres of a row-major ``grid`` (N = rows · cols)."""
    (rows, cols), (ph, pw) = to_pair(grid), to_pair(patch_size)
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64),
                          torch.arange(cols, dtype=torch.float64), indexing="ij")
    centres = torch.stack([r.flatten() * ph, c.flatten() * pw], dim=-1)  # "(h w) two"
    return torch.cdist(centres, centres)


def mean_attention_distance(weights: torch.Tensor, grid: tuple[int, int],
                            patch_size: int | tuple[int, int],
                            num_prefix_tokens: int = 1) -> torch.Tensor:
    """Attention weights (B, H, T, T), T = prefix + rows · cols -> distance in pixels (B, H)."""
    n = to_pair(grid)[0] * to_pair(grid)[1]
    if weights.shape[-1] != num_prefix_tokens + n or weights.shape[-2] != weights.shape[-1]:
        raise ValueError(f"attention of shape {tuple(weights.shape)} does not fit a grid "
                         f"{tuple(grid)} with {num_prefix_tokens} prefix tokens")
    patches = weights[..., num_prefix_tokens:, num_prefix_tokens:].double()
    dist = patch_distances(grid, patch_size).to(patches.device)
    return (patches * dist).sum(-1).mean(-1)  # "b h i j, i j -> b h"
