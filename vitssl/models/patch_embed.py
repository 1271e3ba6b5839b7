"""The linear patch projection: a stride-P convolution, the paper's default stem."""

from __future__ import annotations

import torch
from torch import nn

from vitssl.errors import VitsslError
from vitssl.models.sizes import to_pair


def token_grid(height: int, width: int, patch: tuple[int, int],
               what: str = "the patch size") -> tuple[int, int]:
    """The (rows, cols) of ``patch``-pixel tokens over a height x width input; checked."""
    if height % patch[0] or width % patch[1]:
        raise VitsslError(f"input {height}x{width} is not a multiple of {what} "
                          f"{patch[0]}x{patch[1]}")
    return height // patch[0], width // patch[1]


class PatchEmbed(nn.Module):
    """Images (B, C, H, W) -> patch tokens (B, N, D), N = (H/P)(W/P)."""

    def __init__(self, image_size: int | tuple[int, int] = 224, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.image_size = to_pair(image_size)
        self.patch_size = to_pair(patch_size)
        for size, patch in zip(self.image_size, self.patch_size, strict=True):
            if patch < 1 or size < patch:
                raise VitsslError(f"image size {self.image_size} must be at least the patch "
                                  f"size {self.patch_size}")
            if size % patch:
                raise VitsslError(f"image size {self.image_size} is not a multiple of the "
                                  f"patch size {self.patch_size}")
        self.grid_size = (self.image_size[0] // self.patch_size[0],
                          self.image_size[1] // self.patch_size[1])
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid produced for an input of this size."""
        return token_grid(height, width, self.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.grid_for(images.shape[-2], images.shape[-1])
        return self.proj(images).flatten(2).transpose(1, 2)  # "b d h w -> b (h w) d"
