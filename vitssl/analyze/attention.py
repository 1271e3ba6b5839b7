"""Attention weights by explicit maths: softmax(q kᵀ · scale) in fp32 from each block's q and k.

Fused kernels never materialise the weights, so :func:`iter_attention` runs the blocks itself in
``Block.forward``'s order; nothing on the model is changed or hooked.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from einops import rearrange
from torch import nn


@torch.no_grad()
def iter_attention(encoder: nn.Module,
                   images: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, first first: (its output (B, T, D), its attention weights (B, H, T, T) fp32).

    Rows are queries, columns keys; T = prefix tokens + patches in row-major order.
    """
    grid = encoder.grid_for(images.shape[-2], images.shape[-1])
    x = encoder._pos_embed(encoder.embed_patches(images), grid=grid)
    for block in encoder.blocks:
        attn = block.attn
        qkv = attn.qkv(block.norm1(x)).float()
        q, k, v = rearrange(qkv, "b t (three h dh) -> three b h t dh", three=3, h=attn.num_heads)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * attn.head_dim ** -0.5, dim=-1)
        x = x + attn.proj(rearrange(weights @ v, "b h t dh -> b t (h dh)").to(x.dtype))
        x = x + block.mlp(block.norm2(x))
        yield x, weights


@torch.no_grad()
def explicit_features(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, T, D) final-norm features through the explicit path: ``forward_features`` up to
    rounding, the check that it runs the network the weights were trained in."""
    *_, (x, _) = iter_attention(encoder, images)
    return encoder.norm(x)
