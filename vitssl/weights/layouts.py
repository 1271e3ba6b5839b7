"""Which layout a path holds, and its encoder: a vitssl run or checkpoint, timm's layout or
a transformers folder. Nothing is unpickled: torch files are read with ``weights_only``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from vitssl.config import Config, normalisation
from vitssl.errors import VitsslError
from vitssl.models import VisionTransformer
from vitssl.weights.state import TORCH_SUFFIXES, Loaded
from vitssl.weights.timm_layout import read_config_json, read_timm_file, read_timm_folder
from vitssl.weights.transformers_layout import MODEL_TYPES, read_transformers_folder

ACCEPTED = ("a vitssl run or checkpoint, timm's layout (a folder with config.json naming an "
            "'architecture' + model.safetensors, or a state dict file) or a transformers "
            f"folder (config.json with model_type {'|'.join(MODEL_TYPES)})")


def _is_vitssl_file(file: Path) -> bool:
    from vitssl.train.checkpoint import read_metadata

    return "config" in read_metadata(file)


def layout(path: str | Path) -> tuple[str, Path]:
    """(``"vitssl"`` | ``"timm"`` | ``"transformers"``, the path to read); one-line errors."""
    p = Path(path)
    if not p.exists():
        raise VitsslError(f"checkpoint not found: '{p}'; accepted: {ACCEPTED}")
    if p.is_file():
        if (p.parent / "config.json").is_file() and p.name in (
                "model.safetensors", "pytorch_model.bin") and not (
                p.suffix == ".safetensors" and _is_vitssl_file(p)):
            return layout(p.parent)
        if p.suffix == ".safetensors":
            return ("vitssl" if _is_vitssl_file(p) else "timm"), p
        if p.suffix in TORCH_SUFFIXES:
            return "timm", p
        raise VitsslError(f"'{p}' is neither a .safetensors file nor a torch state dict "
                          f"({', '.join(TORCH_SUFFIXES)}); accepted: {ACCEPTED}")
    if (p / "checkpoints").is_dir() or (p / "model.safetensors").is_file() and not (
            p / "config.json").is_file():
        return "vitssl", p
    if (p / "config.json").is_file():
        config = read_config_json(p)
        if config.get("model_type") in MODEL_TYPES:
            return "transformers", p
        if "architecture" in config:
            return "timm", p
        raise VitsslError(f"'{p / 'config.json'}' is neither timm's (no 'architecture') nor "
                          f"an accepted transformers model (model_type "
                          f"{config.get('model_type')!r}); accepted: {ACCEPTED}")
    raise VitsslError(f"'{p}' holds none of the accepted layouts; accepted: {ACCEPTED}")


def read_encoder(path: str | Path, *, heads: int | None = None,
                 grid: tuple[int, int] | None = None) -> Loaded:
    """The encoder held at ``path`` in any accepted layout. ``heads`` / ``grid``: what a bare
    state dict does not say (its head count, a non-square grid)."""
    kind, p = layout(path)
    if kind == "vitssl":
        from vitssl.train.checkpoint import load_encoder, weights_file

        encoder, cfg = load_encoder(p)
        heads_attached = [k for k in ("pre_logits",) if hasattr(encoder, k)]
        return Loaded(encoder, "vitssl", [weights_file(p)], heads_attached,
                      mean=normalisation(cfg.data)[0], std=normalisation(cfg.data)[1])
    if kind == "transformers":
        return read_transformers_folder(p, read_config_json(p))
    if p.is_dir():
        return read_timm_folder(p, read_config_json(p), heads)
    return read_timm_file(p, heads, grid)


def load_any(path: str | Path,
             device: str | torch.device = "cpu") -> tuple[VisionTransformer, Config]:
    """(encoder in eval mode, a config describing it) for ``vitssl eval``: a vitssl run's own
    config, or for other layouts one holding their image size and mean / std."""
    kind, _ = layout(path)
    from vitssl.train.checkpoint import load_encoder

    if kind == "vitssl":
        return load_encoder(path, device)
    loaded = read_encoder(path)
    encoder, cfg = loaded.encoder, Config()
    height, width = encoder.patch_embed.image_size
    model = dataclasses.replace(cfg.model, image_size=height if height == width else
                                [height, width], name=describe(loaded),
                                in_chans=encoder.in_chans)
    data = dataclasses.replace(cfg.data, mean=loaded.mean or cfg.data.mean,
                               std=loaded.std or cfg.data.std)
    return encoder.to(device).eval(), dataclasses.replace(cfg, model=model, data=data)


def describe(loaded: Loaded) -> str:
    """``"timm ViT D=192 depth=12 /16"``: the format and shape of loaded weights."""
    enc = loaded.encoder
    return (f"{loaded.format} ViT D={enc.embed_dim} depth={len(enc.blocks)} "
            f"/{enc.patch_size}")
