"""timm's layout: a ``local-dir:`` folder (``config.json`` + ``model.safetensors``, as
``vitssl export --format timm|hf`` writes and the hub holds) or a bare state dict file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitssl.errors import VitsslError
from vitssl.models.sizes import to_pair
from vitssl.weights.state import Loaded, encoder_from_state, read_state_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# timm arguments whose non-default values vitssl's ViT cannot express.
_REFUSED = {"no_embed_class": False, "reg_tokens": 0, "qk_norm": False, "pre_norm": False,
            "dynamic_img_pad": False, "attn_pool": None}


def weights_in(folder: Path) -> Path:
    """The weights file of a hub-style folder."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise VitsslError(f"'{folder}' holds a config.json but none of {', '.join(WEIGHT_FILES)}")


def _grid(args: dict[str, Any], pretrained: dict[str, Any]) -> tuple[int, int] | None:
    size = args.get("img_size") or (pretrained.get("input_size") or [0])[1:]
    if not size or not args.get("patch_size"):
        return None
    (h, w), (ph, pw) = to_pair(size), to_pair(args["patch_size"])
    return h // ph, w // pw


def read_timm_folder(folder: Path, config: dict[str, Any], heads: int | None = None) -> Loaded:
    """A timm hub folder; ``model_args`` (when given) supply heads, grid and pooling."""
    args = config.get("model_args") or {}
    refused = [k for k, default in _REFUSED.items() if args.get(k, default) != default]
    pool = args.get("global_pool", config.get("global_pool"))
    if refused or pool not in (None, "token", "avg"):
        what = ", ".join(refused) or f"global_pool='{pool}'"
        raise VitsslError(f"'{folder}': timm's {what} has no vitssl equivalent")
    pretrained = config.get("pretrained_cfg") or {}
    file = weights_in(folder)
    encoder, ignored = encoder_from_state(
        read_state_file(file), heads=args.get("num_heads", heads),
        grid=_grid(args, pretrained), pool={"token": "token", "avg": "mean"}.get(pool))
    mean, std = pretrained.get("mean"), pretrained.get("std")
    return Loaded(encoder, "timm", [file], ignored, mean=tuple(mean) if mean else None,
                  std=tuple(std) if std else None)


def read_timm_file(file: Path, heads: int | None = None,
                   grid: tuple[int, int] | None = None) -> Loaded:
    """A bare timm state dict (safetensors, or torch read with ``weights_only=True``)."""
    encoder, ignored = encoder_from_state(read_state_file(file), heads=heads, grid=grid)
    return Loaded(encoder, "timm", [file], ignored, notes=[
        "timm state dict: architecture read from tensor shapes"])


def read_config_json(folder: Path) -> dict[str, Any]:
    """A folder's ``config.json`` as a mapping; one-line errors."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise VitsslError(f"cannot read '{folder / 'config.json'}': {exc}") from None
    if not isinstance(config, dict):
        raise VitsslError(f"'{folder / 'config.json'}' does not hold a JSON object")
    return config
