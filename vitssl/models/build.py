"""Build an encoder from a :class:`~vitssl.config.ModelConfig` and the stem registry."""

from __future__ import annotations

from dataclasses import replace

from vitssl.config import ModelConfig, image_hw
from vitssl.errors import VitsslError
from vitssl.kernels import check_backend
from vitssl.models.variants import parse_model_name
from vitssl.models.vit import VisionTransformer
from vitssl.plugins import Registry, get_registry


def build_encoder(cfg: ModelConfig | None = None, registry: Registry | None = None,
                  **overrides) -> VisionTransformer:
    """A freshly initialised encoder; ``overrides`` replace fields of ``cfg``.

    ``pos_embed="auto"`` builds learned position embeddings and ``in_chans="auto"``
    3 channels: a run resolves them to its objective's choice and its data's channels
    first (:func:`vitssl.train.build.resolve_run_config`).
    """
    cfg = replace(cfg or ModelConfig(), **overrides)
    check_backend(cfg.attention)
    variant, patch = parse_model_name(cfg.name)
    if cfg.depth is not None and cfg.depth < 1:
        raise VitsslError(f"model.depth must be >= 1, got {cfg.depth}")
    height, width = image_hw(cfg.image_size)
    size = height if height == width else (height, width)  # stems get an int when square
    in_chans = 3 if cfg.in_chans == "auto" else cfg.in_chans
    if type(in_chans) is not int or in_chans < 1:
        raise VitsslError(f"model.in_chans must be 'auto' or a positive whole number, "
                          f"got {cfg.in_chans!r}")
    registry = registry or get_registry()
    try:
        stem = registry.get("stems", cfg.stem)(image_size=size, patch_size=patch,
                                                in_chans=in_chans, embed_dim=variant.embed_dim,
                                                **cfg.stem_options)
    except TypeError as exc:
        raise VitsslError(f"stem '{cfg.stem}' does not accept options {cfg.stem_options}: "
                          f"{exc}") from None
    return VisionTransformer(
        stem, embed_dim=variant.embed_dim, depth=cfg.depth or variant.depth,
        num_heads=variant.num_heads, mlp_dim=variant.mlp_dim, class_token=cfg.class_token,
        pool=cfg.pool, fc_norm=bool(cfg.fc_norm), drop_rate=cfg.drop_rate,
        attn_drop_rate=cfg.attn_drop_rate, drop_path_rate=cfg.drop_path_rate,
        attention=cfg.attention,
        pos_embed="learned" if cfg.pos_embed == "auto" else cfg.pos_embed)
