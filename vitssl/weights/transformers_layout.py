"""Read a Hugging Face transformers folder of ``ViTModel``, ``ViTMAEModel`` or
``Dinov2Model`` (their ``...ForImageClassification`` / ``...ForPreTraining`` too) without
importing transformers: 4.x names (what 4.x and 5.x both save) mapped to timm's, q, k and v
fused into one ``qkv``, Dinov2's LayerScale folded into the layer before it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from vitssl.errors import VitsslError
from vitssl.models.sizes import to_pair
from vitssl.weights.state import Loaded, encoder_from_state, read_state_file

MODEL_TYPES = {"vit": "ViTModel", "vit_mae": "ViTMAEModel", "dinov2": "Dinov2Model"}
_LAYER = r"^encoder\.layer\.(\d+)\."
_RENAMES = [  # transformers 4.x name -> timm's (vitssl's)
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (_LAYER + r"(layernorm_before|norm1)\.", r"blocks.\1.norm1."),
    (_LAYER + r"(layernorm_after|norm2)\.", r"blocks.\1.norm2."),
    (_LAYER + r"attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.\2."),
    (_LAYER + r"attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (_LAYER + r"(intermediate\.dense|mlp\.fc1)\.", r"blocks.\1.mlp.fc1."),
    (_LAYER + r"(output\.dense|mlp\.fc2)\.", r"blocks.\1.mlp.fc2."),
    (_LAYER + r"layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^layernorm\.", "norm."),
]


def _weights(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: every file the index names, in order
        names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [folder / name for name in names]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise VitsslError(f"'{folder}' holds a transformers config.json but no model.safetensors, "
                      f"model.safetensors.index.json or pytorch_model.bin")


def _check(config: dict[str, Any], folder: Path) -> None:
    what = []
    if config.get("hidden_act", "gelu") != "gelu":
        what.append(f"hidden_act '{config['hidden_act']}' (vitssl's MLP uses exact GELU)")
    if config.get("use_swiglu_ffn"):
        what.append("a SwiGLU MLP (use_swiglu_ffn)")
    if what:
        raise VitsslError(f"'{folder}': {', '.join(what)} has no vitssl equivalent")


def to_timm_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the encoder's tensors under timm's names with qkv fused, the keys left out)."""
    out, ignored = {}, []
    for key, value in state.items():
        name = re.sub(r"^(vit|dinov2)\.", "", key)
        for pattern, target in _RENAMES:
            if re.search(pattern, name):
                out[re.sub(pattern, target, name)] = value
                break
        else:
            ignored.append(key)
    for key in [k for k in out if re.search(r"\.attn\.query\.", k)]:
        parts = [out.pop(key.replace(".query.", f".{p}.")) for p in ("query", "key", "value")]
        out[key.replace(".query.", ".qkv.")] = torch.cat(parts)
    return out, sorted(ignored)


def read_transformers_folder(folder: Path, config: dict[str, Any]) -> Loaded:
    """A standalone encoder from a transformers folder whose ``model_type`` is accepted."""
    _check(config, folder)
    files = _weights(folder)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_state_file(file))
    timm_state, ignored = to_timm_names(state)
    ours = config.get("vitssl") or {}  # a vitssl export: its pooling, its norm after pooling
    if ours.get("fc_norm"):
        timm_state = {re.sub(r"^norm\.", "fc_norm.", k): v for k, v in timm_state.items()}
    layer_scale = any(k.endswith(".gamma") for k in timm_state)
    (h, w), (ph, pw) = to_pair(config.get("image_size", 224)), to_pair(config.get("patch_size", 16))
    encoder, _ = encoder_from_state(timm_state, heads=config.get("num_attention_heads"),
                                    grid=(h // ph, w // pw), pool=ours.get("pool", "token"))
    eps = float(config.get("layer_norm_eps", 1e-12))
    for module in encoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = eps  # this standalone encoder computes exactly what the folder does
    kind = MODEL_TYPES[config["model_type"]]
    notes = ["LayerScale folded into attn.proj and mlp.fc2"] if layer_scale else []
    processor = folder / "preprocessor_config.json"
    pre = json.loads(processor.read_text()) if processor.is_file() else {}
    mean, std = pre.get("image_mean"), pre.get("image_std")
    return Loaded(encoder, f"transformers {kind}", files, ignored, notes,
                  mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
                  layer_norm_eps=eps)
