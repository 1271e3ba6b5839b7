"""Attention rollout (Abnar & Zuidema 2020), as used for the paper's Fig. 6.

Average the heads of each block, add the identity for the residual path, re-normalise the rows
and multiply the blocks in order: ``R = Â_L ⋯ Â_1``. The map of an image is
``R[class token, patches]``; without a class token, the mean of ``R``'s patch query rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def attention_rollout(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-block attention (B, H, T, T), first block first -> rollout R (B, T, T)."""
    rollout = None
    for w in weights:
        a = w.double().mean(dim=1)  # heads averaged: "b h i j -> b i j"
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ValueError("attention rollout needs at least one block")
    return rollout


def rollout_map(rollout: torch.Tensor, grid: tuple[int, int],
                num_prefix_tokens: int = 1) -> torch.Tensor:
    """Rollout (B, T, T) -> the (B, rows, cols) map over the patches (see above)."""
    patches = rollout[:, num_prefix_tokens:, num_prefix_tokens:]
    row = rollout[:, 0, num_prefix_tokens:] if num_prefix_tokens else patches.mean(dim=1)
    return row.reshape(row.shape[0], grid[0], grid[1])
