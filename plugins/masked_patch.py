"""``masked-patch``: masked patch prediction (Dosovitskiy et al. 2021, section 4.6, B.1.2).

Corrupt ``floor(corrupt_ratio * N)`` patch embeddings per image after the linear
projection and before the position embeddings: of those, ``mask_prob`` become a
learnable [mask] embedding, ``random_prob`` the embedding of a random other patch
of the same image, the rest stay unchanged. Each corrupted patch's own output
token predicts its target through a linear head; the loss covers corrupted
positions only.

Targets (``target=``): ``mean-color`` (default) - the patch mean of the
un-normalised pixels, each channel quantised to ``2**bits`` levels (512 classes
for 3 bits); ``downsampled-4x4`` - the patch area-resized to 4x4, each of the 16
cells quantised the same way (16 predictions of 512 classes); ``pixels`` - L2
regression on the patch of the normalised image.

Images of C != 3 channels: each channel's quantised mean is its own prediction
(C classifications of ``2**bits`` levels per patch, or per cell): the paper's joint
colour class exists for RGB, and a joint class over C bands would need ``2**(bits C)``
outputs (2.6e5 for 6 bands at 3 bits). For C = 3 the target is the paper's.

Randomness: when the batch carries ``"sample_seed"`` (B,) the draws of sample
``i`` come from a generator seeded with it (:func:`vitssl.ssl.batch.per_sample_uniform`),
so a sample is corrupted the same way whichever rank or batch it lands in; otherwise
the global torch RNG is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import vitssl
from vitssl.errors import VitsslError
from vitssl.ssl.batch import batch_seeds, patchify, per_sample_uniform

TARGETS = ("mean-color", "downsampled-4x4", "pixels")


@dataclass
class Corruption:
    """Per image and patch (B, N): which patches were corrupted and how."""

    corrupted: torch.Tensor  # bool, exactly k True per row
    positions: torch.Tensor  # long (B, k): the corrupted patches of each row, ascending
    masked: torch.Tensor  # bool, replaced by the [mask] embedding
    swapped: torch.Tensor  # bool, replaced by another patch's embedding
    other: torch.Tensor  # long, the source patch for swapped positions (never itself)


def quantise_colour(values: torch.Tensor, bits: int = 3) -> torch.Tensor:
    """(..., 3) values in [0, 1] -> (...) class index ``r * L^2 + g * L + b``, L = 2**bits."""
    levels = 2 ** bits
    q = (values * levels).floor().clamp_(0, levels - 1).long()
    return (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]


class MaskedPatchPrediction(vitssl.Objective):
    """Masked patch prediction around an encoder; ``forward(batch)`` -> loss and metrics."""

    def __init__(self, encoder: nn.Module, target: str = "mean-color",
                 corrupt_ratio: float = 0.5, mask_prob: float = 0.8, random_prob: float = 0.1,
                 bits: int = 3) -> None:
        super().__init__()
        if target not in TARGETS:
            raise VitsslError(f"unknown masked-patch target '{target}'; accepted: "
                              f"{', '.join(TARGETS)}")
        if not 0.0 < corrupt_ratio <= 1.0:
            raise VitsslError(f"corrupt_ratio must be in (0, 1], got {corrupt_ratio}")
        if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1.0 + 1e-9:
            raise VitsslError(f"mask_prob and random_prob must be >= 0 with a sum <= 1, got "
                              f"{mask_prob} and {random_prob}")
        if not 1 <= int(bits) <= 8:
            raise VitsslError(f"bits must be between 1 and 8, got {bits}")
        self.encoder = encoder
        self.target, self.corrupt_ratio = target, float(corrupt_ratio)
        self.mask_prob, self.random_prob = float(mask_prob), float(random_prob)
        self.bits = int(bits)
        dim = encoder.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        channels = getattr(encoder, "in_chans", 3)
        # Predictions per patch (or cell), each over num_classes: one joint RGB class, or one
        # per channel.
        self.joint = channels == 3
        self.per_cell = 1 if self.joint else channels
        self.num_classes = 2 ** (self.bits * (3 if self.joint else 1))
        grid = encoder.grid_size
        self.num_corrupted(grid[0] * grid[1])  # a grid with nothing to corrupt is refused now
        if target == "mean-color":
            out = self.per_cell * self.num_classes
        elif target == "downsampled-4x4":
            patch = getattr(encoder, "patch_size", 0)
            if not isinstance(patch, int) or patch < 4 or patch % 4:
                raise VitsslError(f"target=downsampled-4x4 needs square patches whose side is "
                                  f"a multiple of 4, got patch size {patch}")
            out = 16 * self.per_cell * self.num_classes
        else:
            image = getattr(encoder.patch_embed, "image_size", None)
            if image is None:
                raise VitsslError("target=pixels needs a stem with an image_size")
            ih, iw = (image, image) if isinstance(image, int) else image
            out = channels * (ih // grid[0]) * (iw // grid[1])
        self.head = nn.Linear(dim, out)
        nn.init.zeros_(self.head.bias)

    # -- corruption ---------------------------------------------------------------------------
    def num_corrupted(self, num_patches: int) -> int:
        """floor(corrupt_ratio * N); a :class:`VitsslError` when that is 0."""
        k = int(self.corrupt_ratio * num_patches)
        if k < 1:
            raise VitsslError(f"masked-patch: corrupt_ratio={self.corrupt_ratio} of a "
                              f"{num_patches}-patch grid corrupts nothing; use a larger image "
                              f"or a smaller patch size")
        return k

    def draw(self, batch_size: int, num_patches: int, device: torch.device,
             seeds: list[int] | None = None) -> Corruption:
        """Draw which patches to corrupt and how (uniform (B, 3, N) draws per sample)."""
        u = per_sample_uniform(batch_size, (3, num_patches), device, seeds)
        n, k = num_patches, self.num_corrupted(num_patches)
        order = u[:, 0].argsort(dim=1)
        corrupted = torch.zeros(batch_size, n, dtype=torch.bool, device=device)
        corrupted.scatter_(1, order[:, :k], True)
        choice = u[:, 1]
        masked = corrupted & (choice < self.mask_prob)
        swapped = corrupted & (choice >= self.mask_prob) & (choice < self.mask_prob +
                                                              self.random_prob)
        if n < 2:
            swapped = torch.zeros_like(swapped)
        # A uniform index over the N - 1 other patches: skip over the patch itself.
        other = (u[:, 2] * (n - 1)).long().clamp_(max=max(n - 2, 0))
        other = other + (other >= torch.arange(n, device=device)).long()
        return Corruption(corrupted, order[:, :k].sort(dim=1).values, masked, swapped,
                          other.clamp_(max=n - 1))

    def corrupt(self, tokens: torch.Tensor, plan: Corruption) -> torch.Tensor:
        """Apply a corruption plan to patch embeddings (B, N, D)."""
        d = tokens.shape[-1]
        others = tokens.gather(1, plan.other.unsqueeze(-1).expand(-1, -1, d))
        out = torch.where(plan.masked.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        return torch.where(plan.swapped.unsqueeze(-1), others, out)

    # -- targets ------------------------------------------------------------------------------
    def targets(self, batch: dict[str, torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """(B, N[, C]) classes for mean-color, (B, N, 16[, C]) for downsampled-4x4 (the channel
        axis for C != 3), (B, N, C ph pw) pixels."""
        if self.target == "pixels":
            return patchify(batch["image"].float(), grid).flatten(2)
        pixels = batch.get("pixels")
        if pixels is None:
            raise VitsslError("masked-patch colour targets need the un-normalised 'pixels' in "
                              "the batch")
        patches = patchify(pixels.float(), grid)  # (B, N, C, ph, pw)
        if self.target == "mean-color":
            return self.quantise(patches.mean(dim=(-2, -1)))
        b, n, c, ph, pw = patches.shape
        small = F.adaptive_avg_pool2d(patches.reshape(b * n, c, ph, pw), 4)  # (BN, C, 4, 4)
        small = small.reshape(b, n, c, 16).transpose(-1, -2)  # (B, N, 16, C)
        return self.quantise(small)

    def quantise(self, values: torch.Tensor) -> torch.Tensor:
        """(..., C) values in [0, 1] -> the joint RGB class (...), or per channel (..., C)."""
        if self.joint:
            return quantise_colour(values, self.bits)
        levels = 2 ** self.bits
        return (values * levels).floor().clamp_(0, levels - 1).long()

    # -- the objective ------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        images = batch["image"]
        encoder = self.encoder
        grid = encoder.grid_for(images.shape[-2], images.shape[-1])
        tokens = encoder.embed_patches(images)  # (B, N, D), no position embeddings yet
        b, n, _ = tokens.shape
        plan = self.draw(b, n, tokens.device, batch_seeds(batch))
        features = encoder.encode(self.corrupt(tokens, plan), grid=grid)
        # Gathered at the corrupted positions (row-major, as boolean indexing would select
        # them, without reading the mask on the host).
        out = _rows(features[:, encoder.num_prefix_tokens:], plan.positions)  # (B k, D)
        pred = self.head(out).float()
        target = _rows(self.targets(batch, grid), plan.positions)
        if self.target == "pixels":
            loss = F.mse_loss(pred, target)
            return {"loss": loss, "loss_mse": loss.detach()}
        pred, target = pred.reshape(-1, self.num_classes), target.reshape(-1)
        loss = F.cross_entropy(pred, target)
        accuracy = (pred.detach().argmax(-1) == target).float().mean()
        return {"loss": loss, "loss_ce": loss.detach(), "accuracy": accuracy}


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N, ...) at ``index`` (B, k) of each row, flattened to (B k, ...)."""
    picked = x.gather(1, index.view(*index.shape, *[1] * (x.ndim - 2)).expand(
        -1, -1, *x.shape[2:]))
    return picked.flatten(0, 1)


@vitssl.hookimpl
def register_objectives(register):
    register("masked-patch", MaskedPatchPrediction)
