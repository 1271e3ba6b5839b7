"""Principal components of the patch-embedding filters (paper Fig. 7 left)."""

from __future__ import annotations

import torch
from torch import nn

NUM_COMPONENTS = 28


def filter_components(weight: torch.Tensor, k: int = NUM_COMPONENTS
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight (D, C, P, P) -> (top-k components (k, C, P, P), explained variance ratio (k,)).

    The D filters are samples of dimension C·P·P, mean-centred over D; signs are arbitrary and
    ``k`` is capped by the rank.
    """
    d, *patch = weight.shape
    x = weight.detach().reshape(d, -1).double()
    x = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(k, vh.shape[0])
    var = s ** 2
    ratio = var[:k] / var.sum().clamp_min(torch.finfo(var.dtype).tiny)
    return vh[:k].reshape(k, *patch), ratio


def normalise_tile(tile: torch.Tensor) -> torch.Tensor:
    """Scale one component (C, P, P) to [0, 1] on its own (a flat tile becomes 0.5)."""
    lo, hi = tile.min(), tile.max()
    return torch.full_like(tile, 0.5) if hi - lo <= 0 else (tile - lo) / (hi - lo)


def pixel_filters(encoder: nn.Module) -> tuple[torch.Tensor | None, str]:
    """(the stem's pixel filters (D, C, P, P), "") or (None, why there are none)."""
    stem = encoder.patch_embed
    proj = getattr(stem, "proj", None)
    if hasattr(stem, "backbone"):
        return None, (f"the {type(stem).__name__} stem embeds CNN feature maps, not pixels: "
                      f"it has no pixel filters to decompose")
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride:
        return None, f"the {type(stem).__name__} stem has no patchifying convolution 'proj'"
    return proj.weight.detach(), ""
