"""Move weights between vitssl encoders and timm ``VisionTransformer`` models.

Parameter names are shared (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``fc_norm``), so conversion checks the architecture and copies tensors.
timm is only needed by :func:`from_timm`; nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitssl.errors import VitsslError
from vitssl.models.patch_embed import PatchEmbed
from vitssl.models.vit import VisionTransformer


def _unsupported(what: str) -> VitsslError:
    return VitsslError(f"cannot convert this timm model: {what} has no vitssl equivalent")


def _is_identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _check_timm_model(model: Any) -> None:
    if getattr(model, "num_reg_tokens", 0):
        raise _unsupported("register tokens")
    if getattr(model, "no_embed_class", False):
        raise _unsupported("no_embed_class position embeddings")
    if not _is_identity(getattr(model, "norm_pre", None)):
        raise _unsupported("a pre-norm before the blocks")
    if getattr(model, "attn_pool", None) is not None:
        raise _unsupported("attention pooling")
    if getattr(model, "pool_include_prefix", False):
        raise _unsupported("pooling over prefix tokens")
    if model.global_pool not in ("token", "avg"):
        raise _unsupported(f"global_pool='{model.global_pool}'")
    for i, block in enumerate(model.blocks):
        attn = block.attn
        extras = [getattr(block, "ls1", None), getattr(block, "ls2", None),
                  getattr(attn, "q_norm", None), getattr(attn, "k_norm", None),
                  getattr(attn, "norm", None), getattr(block.mlp, "norm", None)]
        if not all(_is_identity(m) for m in extras):
            raise _unsupported(f"block {i}'s layer scale or extra norms")
        if not hasattr(attn, "qkv") or attn.qkv.bias is None:
            raise _unsupported(f"block {i}'s attention without a biased packed qkv")
        if not isinstance(block.mlp.act, nn.GELU) or block.mlp.act.approximate != "none":
            raise _unsupported(f"block {i}'s MLP activation")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    if any(n.eps != 1e-6 for n in norms):
        raise _unsupported("LayerNorm eps other than 1e-6")


def _stem_from_timm(patch_embed: Any, embed_dim: int) -> nn.Module:
    """A vitssl stem with the same structure as timm's patch embedding."""
    if type(patch_embed).__name__ == "PatchEmbed":
        if not _is_identity(getattr(patch_embed, "norm", None)):
            raise _unsupported("a norm after the patch embedding")
        if getattr(patch_embed, "dynamic_img_pad", False):
            raise _unsupported("dynamic image padding")
        return PatchEmbed(tuple(patch_embed.img_size), patch_embed.patch_size[0],
                          patch_embed.proj.in_channels, embed_dim)
    raise _unsupported(f"the patch embedding {type(patch_embed).__name__}")


def from_timm(model: Any) -> VisionTransformer:
    """A vitssl encoder with the architecture and weights of a timm ``VisionTransformer``.

    The classifier head is not copied (an encoder has none).
    """
    _check_timm_model(model)
    first = model.blocks[0]
    embed_dim = model.embed_dim
    stem = _stem_from_timm(model.patch_embed, embed_dim)
    encoder = VisionTransformer(
        stem, embed_dim=embed_dim, depth=len(model.blocks), num_heads=first.attn.num_heads,
        mlp_dim=first.mlp.fc1.out_features, class_token=model.cls_token is not None,
        pool="token" if model.global_pool == "token" else "mean",
        fc_norm=not _is_identity(model.fc_norm))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise _unsupported(f"parameters that do not map (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    return encoder.to(next(model.parameters()).dtype)


def to_timm_state_dict(encoder: VisionTransformer) -> dict[str, torch.Tensor]:
    """The encoder's weights under timm's names; load with ``strict=False`` (no head)."""
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}
