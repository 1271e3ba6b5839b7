"""The Vision Transformer encoder (Dosovitskiy et al., 2021).

Names follow timm's ``VisionTransformer`` (``patch_embed``, ``cls_token``,
``pos_embed``, ``blocks``, ``norm``) so weights map one-to-one. ``pos_embed`` is a
learned parameter, or with ``pos_embed="sincos"`` a buffer holding the fixed 2-D
sin-cos table (class token at zeros), as MAE's encoder uses; either is saved under
the same name, so checkpoints and timm exports carry it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from vitssl.errors import VitsslError
from vitssl.models.layers import Block
from vitssl.models.pos_embed import POS_EMBEDS, resample_pos_embed, sincos_pos_embed
from vitssl.models.sizes import to_pair


def xavier_patch_projection(patch_embed: nn.Module) -> None:
    """Xavier-uniform on a linear patch stem's projection (as a (D, C·P·P) matrix), zero bias;
    other stems (no ``proj`` convolution) keep their own initialisation."""
    proj = getattr(patch_embed, "proj", None)
    if isinstance(proj, nn.Conv2d):
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)


def stem_channels(stem: nn.Module) -> int:
    """The channel count a stem takes: its ``in_chans``, else its first convolution's."""
    own = getattr(stem, "in_chans", None)
    if isinstance(own, int):
        return own
    conv = next((m for m in stem.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


class VisionTransformer(nn.Module):
    """ViT encoder over any stem that maps images to (B, N, D) tokens with a ``grid_size``.

    ``forward_features(images)`` -> (B, T, D) after the final norm (T = prefix + N);
    ``forward_head(features)`` -> (B, D), pooled by ``pool`` then ``fc_norm``, as timm;
    ``embed_patches`` / ``encode`` split the two halves so masked objectives can
    corrupt or drop patch embeddings in between.
    """

    def __init__(self, stem: nn.Module, *, embed_dim: int, depth: int, num_heads: int,
                 mlp_dim: int, class_token: bool = True, pool: str = "token",
                 fc_norm: bool = False, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, attention: str = "auto",
                 pos_embed: str = "learned") -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise VitsslError(f"unknown pos_embed '{pos_embed}'; accepted: "
                              f"{', '.join(POS_EMBEDS)}")
        if pool not in ("token", "mean"):
            raise VitsslError(f"unknown pool '{pool}'; accepted: token, mean")
        if pool == "token" and not class_token:
            raise VitsslError("pool='token' needs the class token; use pool='mean' or "
                              "class_token=true")
        self.patch_embed = stem
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.grid_size = to_pair(stem.grid_size)
        self.in_chans = stem_channels(stem)
        patch = to_pair(getattr(stem, "patch_size", 1))
        self.patch_size = patch[0] if patch[0] == patch[1] else patch
        self.global_pool = pool
        self.num_prefix_tokens = 1 if class_token else 0
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        if pos_embed == "sincos":  # fixed: a buffer, never trained
            self.register_buffer("pos_embed", self.sincos_table(self.grid_size))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + num_patches,
                                                      embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_dim, drop_rate, attn_drop_rate, rate, attention)
            for rate in rates])
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if fc_norm else nn.Identity()
        self.reset_parameters()

    # -- initialisation -------------------------------------------------------------------
    def reset_parameters(self) -> None:
        if self.fixed_pos_embed:
            with torch.no_grad():
                self.pos_embed.copy_(self.sincos_table(self.grid_size))
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        xavier_patch_projection(self.patch_embed)

    # -- attention backend ----------------------------------------------------------------
    def set_attention(self, backend: str) -> None:
        """Route every block's attention through ``vitssl.kernels.attention(backend=...)``."""
        for block in self.blocks:
            block.attn.backend = backend

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: less memory, the same gradients."""
        for block in self.blocks:
            block.grad_checkpointing = enable

    # -- the two halves -------------------------------------------------------------------
    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid the stem produces for an input of this size."""
        if hasattr(self.patch_embed, "grid_for"):
            return to_pair(self.patch_embed.grid_for(height, width))
        image = to_pair(getattr(self.patch_embed, "image_size", (height, width)))
        return (height * self.grid_size[0] // image[0], width * self.grid_size[1] // image[1])

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> patch embeddings (B, N, D), before position embeddings."""
        return self.patch_embed(images)

    @property
    def fixed_pos_embed(self) -> bool:
        """True when ``pos_embed`` is the fixed sin-cos table (a buffer), not a parameter."""
        return not isinstance(self.pos_embed, nn.Parameter)

    def sincos_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """The fixed sin-cos table for ``grid``: (1, prefix + rows * cols, D), prefix zeros."""
        return sincos_pos_embed(self.embed_dim, grid, self.num_prefix_tokens)[None]

    def patch_pos_embed(self, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Position embeddings of the patch tokens for ``grid``: (1, N, D).

        Learned ones are resampled from the model's grid; the fixed sin-cos table is
        computed for ``grid`` directly.
        """
        grid = self.grid_size if grid is None else to_pair(grid)
        if self.fixed_pos_embed and grid != self.grid_size:
            table = self.sincos_table(grid).to(self.pos_embed)
            return table[:, self.num_prefix_tokens:]
        pos = resample_pos_embed(self.pos_embed, self.grid_size, grid, self.num_prefix_tokens)
        return pos[:, self.num_prefix_tokens:]

    def _pos_embed(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                   grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Patch embeddings -> block input (B, T, D): position embeddings, class token, dropout."""
        pos = self.patch_pos_embed(grid)
        if positions is None:
            if tokens.shape[1] != pos.shape[1]:
                raise VitsslError(f"got {tokens.shape[1]} patch tokens but the grid "
                                  f"{grid or self.grid_size} has {pos.shape[1]}")
            x = tokens + pos
        else:
            x = tokens + pos[0][positions]  # "(n d), b k -> b k d"
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls.to(x.dtype), x], dim=1)
        return self.pos_drop(x)

    def encode(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
               grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Patch embeddings -> features (B, T, D) after the final norm.

        ``tokens`` holds all N patch embeddings of ``grid`` (default: the model's grid),
        or, with ``positions`` (B, n) long indices into that grid, a subset of them.
        """
        x = self.blocks(self._pos_embed(tokens, positions, grid))
        return self.norm(x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> features (B, T, D); any input size the stem accepts."""
        grid = self.grid_for(images.shape[-2], images.shape[-1])
        return self.encode(self.embed_patches(images), grid=grid)

    def forward_intermediates(
            self, images: torch.Tensor, indices: int | Sequence[int] | None = None, *,
            norm: bool = False, output_fmt: str = "NLC", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The outputs of selected blocks, and the final features (timm's API, no hooks).

        ``indices``: ``None`` takes every block, an int ``n`` the last ``n`` blocks, a
        sequence those block indices (negative ones count from the end); outputs come in
        block order. ``norm`` applies the final norm to each taken output (the last block's
        output with ``norm=True`` equals the final features). ``output_fmt``: ``"NLC"``
        gives (B, T, D) with the prefix tokens, ``"NCHW"`` the patch tokens as (B, D, h, w).
        Returns ``(forward_features(images), outputs)``, or with ``intermediates_only`` just
        ``outputs`` (the blocks after the last taken one are then not run).
        """
        if output_fmt not in ("NLC", "NCHW"):
            raise VitsslError(f"unknown output_fmt '{output_fmt}'; accepted: NLC, NCHW")
        take = self._block_indices(indices)
        grid = self.grid_for(images.shape[-2], images.shape[-1])
        x = self._pos_embed(self.embed_patches(images), grid=grid)
        last = max(take) if intermediates_only and take else len(self.blocks) - 1
        outputs = []
        for i, block in enumerate(self.blocks[:last + 1]):
            x = block(x)
            if i in take:
                outputs.append(self._format(self.norm(x) if norm else x, grid, output_fmt))
        if intermediates_only:
            return outputs
        return self.norm(x), outputs

    def _block_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        depth = len(self.blocks)
        if indices is None:
            return list(range(depth))
        if isinstance(indices, int) and not isinstance(indices, bool):
            if not 1 <= indices <= depth:
                raise VitsslError(f"cannot take the last {indices} blocks of {depth}; "
                                  f"accepted: 1..{depth}")
            return list(range(depth - indices, depth))
        take = []
        for i in indices:
            if not -depth <= int(i) < depth:
                raise VitsslError(f"block index {i} out of range for depth {depth}; "
                                  f"accepted: {-depth}..{depth - 1}")
            take.append(int(i) % depth)
        return sorted(set(take))

    def _format(self, x: torch.Tensor, grid: tuple[int, int], output_fmt: str) -> torch.Tensor:
        if output_fmt == "NLC":
            return x
        return rearrange(x[:, self.num_prefix_tokens:], "b (h w) d -> b d h w",
                         h=grid[0], w=grid[1])

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D): the class token, or the mean of the patch tokens."""
        if self.global_pool == "token":
            return features[:, 0]
        return features[:, self.num_prefix_tokens:].mean(dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> the pooled features (B, D), then ``fc_norm`` (timm's pre-logits)."""
        return self.fc_norm(self.pool(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    # -- checkpoints at another resolution --------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        key = prefix + "pos_embed"
        stored = state_dict.get(key)
        if stored is not None and stored.shape != self.pos_embed.shape:
            if self.fixed_pos_embed:  # the same formula, at this model's grid
                state_dict[key] = self.sincos_table(self.grid_size).to(stored)
            else:
                state_dict[key] = self._resampled(stored)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _resampled(self, stored: torch.Tensor) -> torch.Tensor:
        """A stored learned table of another grid (``source_grid``, else square) at ours."""
        old = stored.shape[1] - self.num_prefix_tokens
        side = math.isqrt(old)
        source = getattr(self, "source_grid", None) or (side, side)
        if source[0] * source[1] != old:
            raise VitsslError(f"cannot resample a position embedding of {old} patches; "
                              f"set encoder.source_grid to its (rows, cols) first")
        return resample_pos_embed(stored, source, self.grid_size, self.num_prefix_tokens)
