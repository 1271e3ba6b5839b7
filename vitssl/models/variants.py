"""The ViT size table (paper Table 1 plus Ti/S) and the ``"B/16"`` name parser."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vitssl.errors import VitsslError


@dataclass(frozen=True)
class Variant:
    name: str
    depth: int
    embed_dim: int
    mlp_dim: int
    num_heads: int


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("Ti", 12, 192, 768, 3),
        Variant("S", 12, 384, 1536, 6),
        Variant("B", 12, 768, 3072, 12),
        Variant("L", 24, 1024, 4096, 16),
        Variant("H", 32, 1280, 5120, 16),
    )
}

_NAME = re.compile(r"^\s*(?P<size>[A-Za-z]+)\s*/\s*(?P<patch>\d+)\s*$")


def parse_model_name(name: str) -> tuple[Variant, int]:
    """``"B/16"`` -> (the Base variant, patch size 16)."""
    match = _NAME.match(name)
    size = match and {k.lower(): k for k in VARIANTS}.get(match["size"].lower())
    if not match or size is None:
        raise VitsslError(f"bad model name '{name}': expected SIZE/PATCH with SIZE one of "
                          f"{', '.join(VARIANTS)} (e.g. 'B/16', 'Ti/4')")
    patch = int(match["patch"])
    if patch < 1:
        raise VitsslError(f"bad model name '{name}': the patch size must be >= 1")
    return VARIANTS[size], patch
