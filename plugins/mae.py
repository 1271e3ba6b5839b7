"""``mae``: masked autoencoders (He et al. 2022, facebookresearch/mae).

Per image, ``keep = int(N * (1 - mask_ratio))`` patches are kept at random
(argsort of uniform noise); the encoder sees only those (plus its class
token) through ``encode(tokens, positions=...)``. A light decoder embeds the
encoded tokens to its own width, appends one learnable mask token per dropped
patch, restores the original order, adds fixed 2-D sin-cos position
embeddings, runs ``decoder_depth`` pre-norm blocks and predicts every patch's
pixels. The loss is the mean squared error over masked patches only, on the
normalised image's patches — each patch normalised by its own mean and
variance with ``norm_pix_loss`` (the default, as MAE recommends). The encoder's
own position embeddings are the same fixed sin-cos table, as MAE's encoder's
(``pos_embed = "sincos"``, what ``model.pos_embed=auto`` picks;
``model.pos_embed=learned`` keeps the ViT's). ``encoder_init="xavier"``
re-initialises the encoder as MAE's ``initialize_weights`` does (linear layers and
the patch projection xavier-uniform with zero biases, the class token normal with
std 0.02) instead of keeping the encoder's own initialisation (``"keep"``).

Decoder size: ``decoder_dim`` / ``decoder_depth`` / ``decoder_heads``
default to MAE's 512 / 8 / 16 for encoders of width >= 768 and to half the
encoder width, 2 blocks and the encoder's head count below that, so the
decoder stays lighter than the encoder it trains.
Each image's mask is drawn from its ``"sample_seed"`` (:mod:`vitssl.ssl.batch`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

import vitssl
from vitssl.errors import VitsslError
from vitssl.models.vit import xavier_patch_projection
from vitssl.ssl import Block, sincos_pos_embed
from vitssl.ssl.batch import batch_seeds, patchify
from vitssl.ssl.masking import random_masking

ENCODER_INITS = ("keep", "xavier")


def xavier_linears(modules: Iterable[nn.Module]) -> None:
    """MAE's initialisation of the linear layers among ``modules``: xavier-uniform, zero bias."""
    for module in modules:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class MaskedAutoencoder(vitssl.Objective):
    """MAE around an encoder; ``forward(batch)`` -> masked-patch reconstruction loss."""

    pos_embed = "sincos"

    def __init__(self, encoder: nn.Module, mask_ratio: float = 0.75,
                 decoder_dim: int | None = None, decoder_depth: int | None = None,
                 decoder_heads: int | None = None, norm_pix_loss: bool = True,
                 encoder_init: str = "keep") -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise VitsslError(f"mae: mask_ratio must lie in [0, 1), got {mask_ratio}")
        if encoder_init not in ENCODER_INITS:
            raise VitsslError(f"mae: unknown encoder_init '{encoder_init}'; accepted: "
                              f"{', '.join(ENCODER_INITS)}")
        width = encoder.embed_dim
        large = width >= 768
        decoder_dim = int(decoder_dim or (512 if large else width // 2))
        decoder_depth = int(decoder_depth or (8 if large else 2))
        decoder_heads = int(decoder_heads or (16 if large else encoder.num_heads))
        if decoder_depth < 1 or decoder_dim < 1 or decoder_dim % decoder_heads:
            raise VitsslError(f"mae: need decoder_depth >= 1 and decoder_dim ({decoder_dim}) "
                              f"divisible by decoder_heads ({decoder_heads})")
        if decoder_dim % 4:
            raise VitsslError(f"mae: decoder_dim must be a multiple of 4 (sin-cos position "
                              f"embeddings), got {decoder_dim}")
        patch = encoder.patch_size
        if not isinstance(patch, int):
            raise VitsslError(f"mae needs square patches; the encoder's are {patch}")
        self.encoder = encoder
        if encoder_init == "xavier":  # MAE's; norms and position embeddings kept
            xavier_linears(encoder.modules())
            xavier_patch_projection(encoder.patch_embed)
            if getattr(encoder, "cls_token", None) is not None:
                nn.init.normal_(encoder.cls_token, std=0.02)
        self.mask_ratio, self.norm_pix_loss = float(mask_ratio), bool(norm_pix_loss)
        self.num_keep(encoder.grid_size[0] * encoder.grid_size[1])  # refuse empty grids now
        self.decoder_embed = nn.Linear(width, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.Sequential(*[
            Block(decoder_dim, decoder_heads, 4 * decoder_dim) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch * patch * encoder.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        xavier_linears([*self.decoder_blocks.modules(), self.decoder_embed, self.decoder_pred])

    def num_keep(self, num_patches: int) -> int:
        """int(N * (1 - mask_ratio)); a :class:`VitsslError` when nothing is kept or masked."""
        keep = int(num_patches * (1.0 - self.mask_ratio))
        if not 0 < keep < num_patches:
            raise VitsslError(f"mae: mask_ratio={self.mask_ratio} of a {num_patches}-patch "
                              f"grid keeps {keep}; it must keep at least one patch and mask "
                              f"at least one")
        return keep

    def decode(self, features: torch.Tensor, ids_restore: torch.Tensor,
               grid: tuple[int, int]) -> torch.Tensor:
        """Encoded visible tokens (B, prefix + keep, D) -> patch predictions (B, N, C p p)."""
        prefix = self.encoder.num_prefix_tokens
        x = self.decoder_embed(features)
        b, n = ids_restore.shape
        visible = x[:, prefix:]
        masks = self.mask_token.to(x.dtype).expand(b, n - visible.shape[1], -1)
        full = torch.cat([visible, masks], dim=1)  # shuffled order
        full = full.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        full = full + sincos_pos_embed(x.shape[-1], grid).to(full)
        x = torch.cat([x[:, :prefix], full], dim=1)  # prefix tokens: position 0 (zeros)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, prefix:])

    def targets(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, C p p) patches of the normalised image, per-patch normalised if asked."""
        target = patchify(images.float(), grid).flatten(2)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        images = batch["image"]
        encoder = self.encoder
        grid = encoder.grid_for(images.shape[-2], images.shape[-1])
        tokens = encoder.embed_patches(images)  # (B, N, D)
        b, n, d = tokens.shape
        ids_keep, ids_restore = random_masking(b, n, self.num_keep(n), tokens.device,
                                               batch_seeds(batch))
        visible = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        features = encoder.encode(visible, positions=ids_keep, grid=grid)
        pred = self.decode(features, ids_restore, grid).float()
        mask = torch.ones(b, n, device=tokens.device)
        mask.scatter_(1, ids_keep, 0.0)  # 1 = masked
        per_patch = ((pred - self.targets(images, grid)) ** 2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum()
        return {"loss": loss, "loss_mse": loss.detach()}


@vitssl.hookimpl
def register_objectives(register):
    register("mae", MaskedAutoencoder)
