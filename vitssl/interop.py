"""Move weights between vitssl encoders and timm ``VisionTransformer`` models.

Parameter names are shared, so conversion checks the architecture and copies tensors;
:func:`timm_architecture` gives the timm name and arguments that rebuild an encoder. Only
:func:`from_timm` needs timm; nothing is downloaded.
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
    for what, present in (
            ("register tokens", getattr(model, "num_reg_tokens", 0)),
            ("no_embed_class position embeddings", getattr(model, "no_embed_class", False)),
            ("a pre-norm before the blocks", not _is_identity(getattr(model, "norm_pre", None))),
            ("attention pooling", getattr(model, "attn_pool", None) is not None),
            ("pooling over prefix tokens", getattr(model, "pool_include_prefix", False)),
            (f"global_pool='{model.global_pool}'", model.global_pool not in ("token", "avg"))):
        if present:
            raise _unsupported(what)
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
    if type(patch_embed).__name__ == "HybridEmbed":
        return _hybrid_stem_from_timm(patch_embed, embed_dim)
    raise _unsupported(f"the patch embedding {type(patch_embed).__name__}")


def _hybrid_stem_from_timm(patch_embed: Any, embed_dim: int) -> nn.Module:
    """The ``resnet-hybrid`` stem with the layout of timm's HybridEmbed over a ResNetV2: only
    ``ResNetV2(stem_type='same')``, plain or pre-activation (BiT), maps."""
    backbone = patch_embed.backbone
    names = lambda module: [type(m).__name__ for m in module.children()]
    if type(backbone).__name__ != "ResNetV2":
        raise _unsupported(f"the hybrid backbone {type(backbone).__name__} (only ResNetV2 "
                           f"maps)")
    preact = not _is_identity(backbone.norm)
    stem = ["StdConv2dSame"] + ([] if preact else ["GroupNormAct"]) + ["MaxPool2dSame"]
    if names(backbone.stem) != stem:
        raise _unsupported("a hybrid ResNet stem other than 'same' 7x7 conv, norm, max pool")
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in backbone.modules() if isinstance(m, nn.GroupNorm)]
    eps = backbone.stem.conv.eps
    if any(type(c).__name__ != "StdConv2dSame" or c.dilation != (1, 1) or c.groups != 1
           or c.bias is not None or c.eps != eps for c in convs):
        raise _unsupported("hybrid convolutions other than plain weight-standardised 'SAME'")
    groups = norms[0].num_groups
    if any(type(n).__name__ != "GroupNormAct" or n.num_groups != groups or n.eps != 1e-5
           or type(n.act).__name__ not in ("ReLU", "Identity") for n in norms):
        raise _unsupported("hybrid norms other than GroupNorm(eps=1e-5) + ReLU")
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage.blocks):
            stride = (1 if i == 0 else 2) if j == 0 else 1
            kind = "PreActBottleneck" if preact else "Bottleneck"
            if (type(block).__name__ != kind or block.conv2.stride != (stride, stride)
                    or block.conv1.out_channels != block.conv3.out_channels // 4
                    or (block.downsample is None) != (j > 0)):
                raise _unsupported(f"hybrid block {i}.{j} (only plain bottleneck blocks)")
    proj = patch_embed.proj
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride \
            or proj.kernel_size[0] != proj.kernel_size[1]:
        raise _unsupported("a hybrid projection other than a square patchifying conv")
    layers = tuple(len(stage.blocks) for stage in backbone.stages)
    reduction = 4 * 2 ** (len(layers) - 1)
    from vitssl.plugins import get_registry

    factory = get_registry().get("stems", "resnet-hybrid")
    return factory(image_size=tuple(patch_embed.img_size),
                   patch_size=reduction * proj.kernel_size[0],
                   in_chans=backbone.stem.conv.in_channels, embed_dim=embed_dim, layers=layers,
                   channels=tuple(stage.blocks[0].conv3.out_channels
                                  for stage in backbone.stages),
                   stem_width=backbone.stem.conv.out_channels, num_groups=groups, ws_eps=eps,
                   preact=preact)


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
    """The encoder's weights under timm's names (``num_classes=0`` loads them strictly),
    without the supervised ``pre_logits`` layer ``load_encoder`` may attach."""
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()
            if not k.startswith("pre_logits.")}


# timm names whose defaults are closest (every architecture argument is passed explicitly).
TIMM_BY_WIDTH = {192: "vit_tiny_patch16_224", 384: "vit_small_patch16_224",
                 768: "vit_base_patch16_224", 1024: "vit_large_patch16_224",
                 1280: "vit_huge_patch14_224"}
# timm's hybrid ViTs fix their ResNet (v1.5, GroupNorm, weight-standardised "SAME" convs,
# standard widths) by name; only these layouts can be expressed.
TIMM_HYBRIDS = {(2, 2, 2, 2): "vit_small_r26_s32_224", (3, 4, 9): "vit_base_r50_s16_224",
                (3, 4, 6, 3): "vit_large_r50_s32_224"}
_HYBRID_CHANNELS = (256, 512, 1024, 2048)
_TIMM_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.", "fc_norm.")


def _not_expressible(what: str) -> VitsslError:
    return VitsslError(f"cannot export to timm: {what}")


def _hybrid_architecture(stem: nn.Module) -> tuple[str, int]:
    """(timm hybrid name, projection kernel) for a ``resnet-hybrid`` stem timm can build."""
    backbone = stem.backbone
    layers = tuple(len(stage.blocks) for stage in backbone.stages)
    channels = tuple(stage.blocks[0].conv3.out_channels for stage in backbone.stages)
    width = backbone.stem.conv.out_channels
    norms = [m for m in backbone.modules() if isinstance(m, nn.GroupNorm)]
    groups = {n.num_groups for n in norms}
    eps = {getattr(m, "eps", None) for m in backbone.modules() if isinstance(m, nn.Conv2d)}
    if not _is_identity(backbone.norm):
        raise _not_expressible("a pre-activation (BiT) hybrid backbone; timm's hybrid ViTs "
                               "build the v1.5 ResNet (resnet-hybrid with preact=false)")
    if (layers not in TIMM_HYBRIDS or channels != _HYBRID_CHANNELS[:len(layers)]
            or width != 64 or groups != {32} or eps != {1e-8}):
        known = ", ".join(str(k) for k in TIMM_HYBRIDS)
        raise _not_expressible(f"a hybrid stem with layers {layers}, channels {channels}, "
                               f"stem width {width}, {sorted(groups)} groups; timm's hybrid "
                               f"ViTs have only ResNet layers {known} at standard width "
                               f"(64-channel stem, 32 groups)")
    proj = stem.proj
    if proj.kernel_size != proj.stride or proj.kernel_size[0] != proj.kernel_size[1]:
        raise _not_expressible("a hybrid projection other than a square patchifying conv")
    return TIMM_HYBRIDS[layers], proj.kernel_size[0]


def timm_architecture(encoder: VisionTransformer) -> tuple[str, dict[str, Any], str]:
    """(timm model name, ``create_model`` kwargs, first conv) that rebuild ``encoder``.

    The kwargs spell out every architecture argument, so the name only picks timm's
    builder (a plain or a hybrid ViT). Raises one line naming what timm cannot express.
    """
    stem = encoder.patch_embed
    if isinstance(stem, PatchEmbed):
        name = TIMM_BY_WIDTH.get(encoder.embed_dim, "vit_base_patch16_224")
        ph, pw = stem.patch_size
        patch, first_conv = (ph if ph == pw else [ph, pw]), "patch_embed.proj"
        in_chans = stem.proj.in_channels
    elif hasattr(stem, "backbone") and hasattr(stem.backbone, "stages"):
        name, patch = _hybrid_architecture(stem)
        first_conv, in_chans = "patch_embed.backbone.stem.conv", stem.backbone.stem.conv.in_channels
    else:
        raise _not_expressible(f"the stem {type(stem).__name__} has no timm patch embedding")
    first = encoder.blocks[0]
    height, width = stem.image_size
    mlp_ratio = first.mlp.fc1.out_features / encoder.embed_dim
    if int(encoder.embed_dim * mlp_ratio) != first.mlp.fc1.out_features:
        raise _not_expressible(f"an MLP width {first.mlp.fc1.out_features} that is no "
                               f"ratio of the width {encoder.embed_dim}")
    args: dict[str, Any] = {
        "img_size": height if height == width else [height, width], "patch_size": patch,
        "embed_dim": encoder.embed_dim, "depth": len(encoder.blocks),
        "num_heads": first.attn.num_heads,
        "mlp_ratio": mlp_ratio,
        "class_token": encoder.cls_token is not None,
        "global_pool": "token" if encoder.global_pool == "token" else "avg",
        "fc_norm": not _is_identity(encoder.fc_norm),
    }
    if in_chans != 3:
        args["in_chans"] = in_chans
    extra = sorted({k.split(".")[0] for k in to_timm_state_dict(encoder)
                    if not k.startswith(_TIMM_KEYS)})
    if extra:
        raise _not_expressible(f"parameters timm's ViT has no place for: {', '.join(extra)}")
    return name, args, first_conv
