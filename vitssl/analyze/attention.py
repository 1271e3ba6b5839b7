"""Attention weights by explicit maths: softmax(q kᵀ · scale) in fp32 from each block's q and k.

Fused kernels never materialise the weights, so the encoder's own forward
cannot report them. :func:`iter_attention` runs the encoder's blocks itself,
with the same parameters and the same order of operations as ``Block.forward``
(``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``), and computes attention in
float32 as ``softmax(q kᵀ / √d) v``. Nothing on the model is changed or hooked,
so analysing never alters how training runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from einops import rearrange
from torch import nn


def _tokens(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) -> the token sequence (B, T, D) that enters the first block."""
    grid = encoder.grid_for(images.shape[-2], images.shape[-1])
    x = encoder.embed_patches(images) + encoder.patch_pos_embed(grid)
    if getattr(encoder, "cls_token", None) is not None:
        cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls.to(x.dtype), x], dim=1)
    return x


def block_attention(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one pre-norm block on ``x`` (B, T, D); return (its output, weights (B, H, T, T) fp32)."""
    attn = block.attn
    qkv = attn.qkv(block.norm1(x)).float()
    q, k, v = rearrange(qkv, "b t (three h dh) -> three b h t dh", three=3, h=attn.num_heads)
    weights = torch.softmax((q @ k.transpose(-2, -1)) * attn.head_dim ** -0.5, dim=-1)
    mixed = rearrange(weights @ v, "b h t dh -> b t (h dh)").to(x.dtype)
    x = x + attn.proj(mixed)
    x = x + block.mlp(block.norm2(x))
    return x, weights


@torch.no_grad()
def iter_attention(encoder: nn.Module, images: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield each block's attention weights (B, H, T, T), float32, first block first.

    Rows are queries, columns keys; T = prefix tokens + patches in row-major order.
    """
    x = _tokens(encoder, images)
    for block in encoder.blocks:
        x, weights = block_attention(block, x)
        yield weights


@torch.no_grad()
def attention_maps(encoder: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Every block's attention weights as a list of (B, H, T, T) float32 tensors."""
    return list(iter_attention(encoder, images))


@torch.no_grad()
def explicit_features(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, T, D) features after the final norm, computed through the explicit-math path.

    Equal to ``encoder.forward_features`` up to rounding: the check that this
    path runs the same network the weights were trained in.
    """
    x = _tokens(encoder, images)
    for block in encoder.blocks:
        x, _ = block_attention(block, x)
    return encoder.norm(x)
