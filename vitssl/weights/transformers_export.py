"""Write an encoder as a transformers ``ViTModel`` folder (``vitssl export --format
transformers``): ``config.json`` (``model_type: vit``), ``model.safetensors`` under the 4.x
names that transformers 4.x and 5.x both read, ``preprocessor_config.json`` and a model card.

``ViTModel`` always has a class token and a linear patch stem: other encoders are refused in
one line. Its pooler takes the class token, and its ``layernorm`` normalises every token: an
encoder with ``fc_norm`` (the norm after pooling) puts it there, so its tokens are
``hidden_states[-1]`` and its pooled features ``layernorm(pool(tokens))``; the card and the
command say how to pool (:func:`pooling_text`). The pooler is the supervised pre-logits
layer where there is one (dense + tanh, ViT's), else an identity with ``pooler_act:
linear``, so ``pooler_output`` is the class token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitssl.config import normalisation
from vitssl.errors import VitsslError
from vitssl.models import VisionTransformer
from vitssl.models.patch_embed import PatchEmbed
from vitssl.weights.extras import available

_BLOCK = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense",
          "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
          "mlp.fc2": "output.dense"}
CHECK_ATOL = 1e-4


def check_expressible(encoder: VisionTransformer) -> None:
    """Refuse in one line what ``ViTModel`` cannot compute."""
    what = None
    if not isinstance(encoder.patch_embed, PatchEmbed):
        what = f"the stem {type(encoder.patch_embed).__name__} (ViTModel has a linear patch stem)"
    elif encoder.cls_token is None:
        what = "an encoder without a class token (ViTModel always has one)"
    if what:
        raise VitsslError(f"cannot export to transformers: {what}; --format timm or onnx "
                          f"expresses it")


def has_fc_norm(encoder: VisionTransformer) -> bool:
    """Whether the final norm follows pooling: ``ViTModel.layernorm`` then holds it."""
    return not isinstance(encoder.fc_norm, nn.Identity)


def _pooler(encoder: VisionTransformer) -> tuple[dict[str, torch.Tensor], str]:
    head = getattr(encoder, "pre_logits", None)
    if isinstance(head, nn.Sequential) and isinstance(head[0], nn.Linear):
        return {"weight": head[0].weight, "bias": head[0].bias}, "tanh"
    dim = encoder.embed_dim
    return {"weight": torch.eye(dim), "bias": torch.zeros(dim)}, "linear"


def transformers_state(encoder: VisionTransformer) -> dict[str, torch.Tensor]:
    """The encoder's weights under ``ViTModel``'s 4.x names, q, k and v split."""
    own = {k: v.detach() for k, v in encoder.state_dict().items()}
    out = {"embeddings.cls_token": own["cls_token"],
           "embeddings.position_embeddings": own["pos_embed"]}
    norm = "fc_norm" if has_fc_norm(encoder) else "norm"
    out.update({f"layernorm.{k}": own[f"{norm}.{k}"] for k in ("weight", "bias")})
    for kind in ("weight", "bias"):
        out[f"embeddings.patch_embeddings.projection.{kind}"] = own[f"patch_embed.proj.{kind}"]
        out[f"pooler.dense.{kind}"] = _pooler(encoder)[0][kind].detach()
        for i in range(len(encoder.blocks)):
            layer = f"encoder.layer.{i}."
            for ours, theirs in _BLOCK.items():
                out[f"{layer}{theirs}.{kind}"] = own[f"blocks.{i}.{ours}.{kind}"]
            q, k, v = own[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)
            for name, part in zip(("query", "key", "value"), (q, k, v), strict=True):
                out[f"{layer}attention.attention.{name}.{kind}"] = part
    return {k: v.contiguous().clone() for k, v in out.items()}


def _pair(value: tuple[int, int]) -> int | list[int]:
    return value[0] if value[0] == value[1] else list(value)


def transformers_config(encoder: VisionTransformer) -> dict[str, Any]:
    """``config.json`` for ``ViTModel`` (every field a 4.x and a 5.x ``ViTConfig`` reads)."""
    stem = encoder.patch_embed
    patch = stem.patch_size
    return {"architectures": ["ViTModel"], "model_type": "vit",
            "hidden_size": encoder.embed_dim, "num_hidden_layers": len(encoder.blocks),
            "num_attention_heads": encoder.num_heads,
            "intermediate_size": encoder.blocks[0].mlp.fc1.out_features,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
            "layer_norm_eps": 1e-6, "image_size": _pair(stem.image_size),
            "patch_size": _pair(patch), "num_channels": stem.proj.in_channels,
            "qkv_bias": True, "encoder_stride": patch[0],
            "pooler_output_size": encoder.embed_dim, "pooler_act": _pooler(encoder)[1],
            "torch_dtype": "float32",  # what transformers does not read, vitssl does:
            "vitssl": {"pool": encoder.global_pool, "fc_norm": has_fc_norm(encoder)}}


def preprocessor_config(encoder: VisionTransformer, mean: list[float],
                        std: list[float]) -> dict[str, Any]:
    """``ViTImageProcessor`` settings: the run's input size and mean / std."""
    height, width = encoder.patch_embed.image_size
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
            "size": {"height": height, "width": width}, "resample": 2, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(mean),
            "image_std": list(std)}


def pooling_text(encoder: VisionTransformer) -> list[str]:
    """Python lines that get vitssl's tokens and pooled features from ``ViTModel``."""
    take = "[:, 0]" if encoder.global_pool == "token" else "[:, 1:].mean(dim=1)"
    if has_fc_norm(encoder):  # the norm follows pooling: the tokens are before layernorm
        return ["outputs = model(pixel_values=images, output_hidden_states=True)",
                "tokens = outputs.hidden_states[-1]  # before model.layernorm (fc_norm)",
                f"pooled = model.layernorm(tokens{take})"]
    return ["outputs = model(pixel_values=images)", "tokens = outputs.last_hidden_state",
            f"pooled = tokens{take}"]


def vitssl_features(model: Any, images: torch.Tensor,
                    encoder: VisionTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, pooled) from a ``ViTModel`` as :func:`pooling_text` says."""
    outputs = model(pixel_values=images, output_hidden_states=True)
    if not has_fc_norm(encoder):
        tokens = outputs.last_hidden_state
        return tokens, encoder.pool(tokens)
    tokens = outputs.hidden_states[-1]
    return tokens, model.layernorm(encoder.pool(tokens))


def check_with_transformers(folder: Path, encoder: VisionTransformer) -> float | None:
    """Load ``folder`` with ``ViTModel`` and compare tokens; None without transformers."""
    if not available("transformers"):
        return None
    from transformers import ViTModel

    model, info = ViTModel.from_pretrained(str(folder), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise VitsslError(f"transformers' ViTModel does not load the export cleanly: {bad}; "
                          f"nothing written")
    channels = encoder.patch_embed.proj.in_channels
    images = torch.randn(2, channels, *encoder.patch_embed.image_size,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = encoder.forward_features(images)
        tokens, pooled = vitssl_features(model.eval(), images, encoder)
        diff = max((tokens - ours).abs().max().item(),
                   (pooled - encoder.forward_head(ours)).abs().max().item())
    if not diff <= CHECK_ATOL * max(1.0, ours.abs().max().item()):
        raise VitsslError(f"transformers' ViTModel built from the export differs from the "
                          f"encoder (max |diff| {diff:.2e}); nothing written")
    return diff


def write_transformers(encoder: VisionTransformer, out: Path, mean: list[float],
                       std: list[float], card: str) -> None:
    """The folder ``ViTModel.from_pretrained(out)`` loads (checked by the caller)."""
    from safetensors.torch import save_file

    check_expressible(encoder)
    save_file(transformers_state(encoder), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(transformers_config(encoder), indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(encoder, mean, std), indent=2) + "\n")
    (out / "README.md").write_text(card)


def model_card(encoder: VisionTransformer, cfg: Any, out: Path) -> str:
    """The folder's README: what it holds and how to pool."""
    height, width = encoder.patch_embed.image_size
    pooler = ("the supervised pre-logits layer (dense + tanh)" if _pooler(encoder)[1] == "tanh"
              else "the class token (an identity pooler)")
    return "\n".join([
        "---", "library_name: transformers", "pipeline_tag: image-feature-extraction",
        f"tags: [vitssl, vision-transformer, {cfg.objective.name}]", "---", "",
        f"# ViT-{cfg.model.name} pretrained with {cfg.objective.name} (vitssl)", "",
        f"A transformers `ViTModel` holding a vitssl encoder ({len(encoder.blocks)} blocks, "
        f"width {encoder.embed_dim}, {height}x{width} px, data `{cfg.data.spec}`, "
        f"mean, std {[list(v) for v in normalisation(cfg.data)]}). `last_hidden_state` equals "
        f"vitssl's `forward_features`; `pooler_output` is {pooler}.", "",
        "```python", "from transformers import ViTModel",
        f"model = ViTModel.from_pretrained({str(out)!r})",
        "# images: (B, C, H, W) normalised as above", *pooling_text(encoder), "```", "",
        "`tokens` and `pooled` equal vitssl's `forward_features` and pooled features.", ""])
