"""``data2vec2``: data2vec 2.0 for images (Baevski et al. 2023, fairseq ``examples/data2vec``).

An EMA teacher of the whole encoder sees each image once, unmasked; the
student sees ``clone_batch`` masked clones of it and predicts the teacher's
representation of every masked patch::

    y     = LN(mean over the top K blocks of IN(teacher block k's feed-forward output))
    loss  = mean over masked patches of |decoder(student)_p - y_p|² / √D          (loss_regression)
          + cls_weight × mean over clones of |student class token - mean_p y_p|² / √D   (loss_cls)

- Masks (:func:`vitssl.ssl.masking.inverse_block_mask`): inverse block masking,
  ``int(N (1 - mask_ratio))`` *visible* patches per clone in ``block_size``
  blocks, drawn from the sample's ``"sample_seed"`` (the same on any rank or
  resume) and built vectorised on the device. The student encodes only the
  visible patches and its class token (``encode(tokens, positions=...)``).
- Targets: IN normalises each channel over the patches (``F.instance_norm``),
  LN the averaged channels of each patch, neither affine. The *feed-forward
  output* is the block's MLP output before its residual add: data2vec's
  post-norm blocks return ``mlp(norm1(x))`` (``ffn_targets``), which never
  passes through the block's last LayerNorm; in our pre-norm block
  ``x + mlp(norm2(x))`` the same branch is ``mlp(norm2(x))``, read with a
  forward hook on ``blocks[i].mlp``. The residual stream itself would carry
  the earlier blocks' sums and the class token's; the branch output is what
  each block adds.
- Decoder (:class:`ConvDecoder`, fairseq's ``Decoder2d``): every clone's
  visible features are put back on the grid, masked slots filled with
  N(0, ``noise_std``²) (from the global RNG, as drop-path), then
  ``decoder_layers`` × (grouped conv → LayerNorm without affine → GELU, plus a
  residual) and a linear back to the encoder width.
- ``cls_weight`` multiplies a mean over clones. fairseq's ``cls_loss: 0.01``
  multiplies a *sum* over each GPU's clones (16 images × 16 clones) of a loss
  normalised by the masked-patch count, so the paper's weight here is 2.56. Both
  recipes keep it: 0.5 won 150-step screens on Fashion-MNIST and digits but lost
  10.7 fine-tune points on the 500-step digits run (benchmarks/RESULTS.md).
- Teacher momentum (fairseq's EMA): linear from ``momentum`` to
  ``end_momentum`` over the first ``anneal`` of the run, then constant; unset
  ``momentum`` (``recipe=auto``) is chosen so that Σ(1 − m) over the run is
  ``update_mass`` (the paper's schedule sums to 13.25), keeping the paper's
  ratio of end to start rate.

The student is the exported encoder: data2vec 2.0 fine-tunes the student and
drops the EMA (``remove_pretraining_modules``). ``recipe=paper`` keeps the
published ViT-B values (``PAPER``, ``configs/data2vec2-b16.yaml``);
``recipe=auto`` (default, ``SHORT_RUN``) scales clones, block size, top K and
teacher mass to small runs (benchmarks/RESULTS.md, "data2vec 2.0").
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import vitssl
from vitssl.errors import VitsslError
from vitssl.ssl.batch import batch_seeds, per_sample_uniform, progress
from vitssl.ssl.ema import ema_update, teacher_copy
from vitssl.ssl.masking import inverse_block_draws, inverse_block_mask

PAPER_STEPS, PAPER_ANNEAL_STEPS = 375_300, 100_000  # base_images_only_task.yaml
PAPER: dict[str, Any] = dict(
    clone_batch=16, mask_ratio=0.8, block_size=3, top_k=None, momentum=0.9998,
    end_momentum=0.99999, anneal=PAPER_ANNEAL_STEPS / PAPER_STEPS, update_mass=None,
    decoder_dim=768, decoder_layers=6, decoder_kernel=3, decoder_groups=16,
    cls_weight=0.01 * 16 * 16, noise_std=0.01)
"""The published ViT-B image recipe (fairseq ``config/v2/base_images_only_task.yaml``)."""
PAPER_MASS = 13.25  # Σ(1 − m) of the paper's EMA schedule over its 375,300 updates
SHORT_RUN: dict[str, Any] = dict(
    PAPER, clone_batch=2, block_size=None, momentum=None, update_mass=PAPER_MASS,
    decoder_dim=None, decoder_layers=3)
"""``recipe=auto``: 2 clones (a CPU step's cost grows with M), blocks scaled to the grid
(:func:`block_side`), the paper's total teacher update mass whatever the run's length,
a decoder as wide as the encoder with 3 layers (a receptive field of 7 patches spans a
7 × 7 grid as the paper's 6 layers span 14 × 14)."""
RECIPES = {"paper": PAPER, "auto": SHORT_RUN}


def block_side(grid: tuple[int, int]) -> int:
    """The paper's 3-patch blocks of a 14 × 14 grid, scaled to ``grid`` (2 at 7 × 7)."""
    return max(1, round(3 * min(grid) / 14))


def annealed_momentum(start: float, end: float, anneal: float, step: int,
                      total_steps: int) -> float:
    """fairseq's EMA decay: linear from ``start`` to ``end`` over the first ``anneal`` of
    the run, then ``end``."""
    done = step / max(anneal * total_steps, 1e-9)
    return end if done >= 1 else start + (end - start) * done


def run_scaled_start(total_steps: int, update_mass: float, anneal: float,
                     rate_ratio: float, cap: float) -> float:
    """The start momentum whose :func:`annealed_momentum` schedule (end rate =
    ``rate_ratio`` × start rate) sums Σ(1 − m) to ``update_mass``; at most ``cap``."""
    per_step = anneal * (1 + rate_ratio) / 2 + (1 - anneal) * rate_ratio
    return min(cap, max(0.0, 1.0 - update_mass / (max(total_steps, 1) * per_step)))


def make_targets(layers: list[torch.Tensor]) -> torch.Tensor:
    """Feed-forward outputs (B, N, D) of the top K blocks -> targets (B, N, D): each
    instance-normalised over the patches, averaged, layer-normalised."""
    normed = [F.instance_norm(x.float().transpose(1, 2)).transpose(1, 2) for x in layers]
    mean = torch.stack(normed).mean(dim=0)
    return F.layer_norm(mean, mean.shape[-1:])


def regression_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor,
                    num_masked: int) -> torch.Tensor:
    """Σ over masked patches of |pred - target|² / √D, over ``num_masked`` (their count);
    ``masked`` (…, N) bool; other positions are never read."""
    err = (pred.float() - target).square().sum(dim=-1) / math.sqrt(pred.shape[-1])
    return torch.where(masked, err, torch.zeros_like(err)).sum() / num_masked


class ConvDecoder(nn.Module):
    """fairseq's ``Decoder2d``: (grouped conv, LayerNorm without affine, GELU, residual)
    × layers over the grid, then a linear back to the encoder width."""

    def __init__(self, width: int, dim: int, layers: int, kernel: int, groups: int) -> None:
        super().__init__()
        if kernel % 2 == 0 or layers < 1 or width % groups or dim % groups:
            raise VitsslError(f"data2vec2: need an odd decoder_kernel (got {kernel}), "
                              f"decoder_layers >= 1 (got {layers}) and decoder_groups "
                              f"({groups}) dividing the width {width} and decoder_dim {dim}")
        self.convs = nn.ModuleList(
            nn.Conv2d(width if i == 0 else dim, dim, kernel, padding=kernel // 2,
                      groups=groups) for i in range(layers))
        self.proj = nn.Linear(dim, width)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) tokens on a row-major grid -> (B, N, D) predictions."""
        b, n, d = x.shape
        x = x.transpose(1, 2).reshape(b, d, *grid)
        for conv in self.convs:
            y = conv(x)
            y = F.gelu(F.layer_norm(y.movedim(1, -1), y.shape[1:2]).movedim(-1, 1))
            x = y + x if y.shape == x.shape else y
        return self.proj(x.flatten(2).transpose(1, 2))


class Data2Vec2(vitssl.Objective):
    """data2vec 2.0 around an encoder; ``forward(batch)`` -> regression and class-token loss."""

    pos_embed = "sincos"  # data2vec 2.0's fixed 2-D sin-cos table

    def __init__(self, encoder: nn.Module, recipe: str = "auto",
                 clone_batch: int | None = None, mask_ratio: float | None = None,
                 block_size: int | None = None, top_k: int | None = None,
                 momentum: float | None = None, end_momentum: float | None = None,
                 anneal: float | None = None, update_mass: float | None = None,
                 decoder_dim: int | None = None, decoder_layers: int | None = None,
                 decoder_kernel: int | None = None, decoder_groups: int | None = None,
                 cls_weight: float | None = None, noise_std: float | None = None) -> None:
        super().__init__()
        o = resolve(dict(locals()), encoder)
        self.encoder = encoder
        self.teacher = teacher_copy(encoder)
        self.clone_batch, self.mask_ratio = int(o["clone_batch"]), float(o["mask_ratio"])
        self.block_size, self.top_k = o["block_size"], int(o["top_k"])
        self.momentum, self.update_mass = o["momentum"], o["update_mass"]
        self.end_momentum, self.anneal = float(o["end_momentum"]), float(o["anneal"])
        self.cls_weight, self.noise_std = float(o["cls_weight"]), float(o["noise_std"])
        width = encoder.embed_dim
        dim = int(o["decoder_dim"] or width)
        groups = int(o["decoder_groups"] or math.gcd(16, width, dim))
        self.decoder = ConvDecoder(width, dim, int(o["decoder_layers"]),
                                   int(o["decoder_kernel"]), groups)
        self.num_visible(encoder.grid_size)  # refuse a grid the ratio empties now

    def num_visible(self, grid: tuple[int, int]) -> int:
        """int(N (1 - mask_ratio)), at least 1; a :class:`VitsslError` when nothing is masked."""
        n = grid[0] * grid[1]
        keep = max(1, int(n * (1.0 - self.mask_ratio) + 1e-6))
        if keep >= n:
            raise VitsslError(f"data2vec2: mask_ratio={self.mask_ratio} of a {n}-patch grid "
                              f"masks nothing; it must mask at least one patch")
        return keep

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        start = self.momentum
        if start is None:
            ratio = (1 - PAPER["end_momentum"]) / (1 - PAPER["momentum"])
            start = run_scaled_start(total_steps, self.update_mass, self.anneal, ratio,
                                     PAPER["momentum"])
            end = 1 - ratio * (1 - start)
        else:
            end = self.end_momentum
        return annealed_momentum(start, end, self.anneal, step, total_steps)

    @contextmanager
    def feed_forward_outputs(self, blocks: list[nn.Module]):
        """Collects each block's MLP output (before its residual add) while it runs."""
        outputs: list[torch.Tensor] = []
        hooks = [b.mlp.register_forward_hook(lambda _m, _i, out: outputs.append(out))
                 for b in blocks]
        try:
            yield outputs
        finally:
            for hook in hooks:
                hook.remove()

    @torch.no_grad()
    def targets(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The teacher's targets (B, N, D) for the unmasked images, one pass per image."""
        top = list(self.teacher.blocks)[-self.top_k:]
        with self.feed_forward_outputs(top) as outputs:
            self.teacher.encode(self.teacher.embed_patches(images), grid=grid)
        prefix = self.teacher.num_prefix_tokens
        return make_targets([x[:, prefix:] for x in outputs])

    def visible(self, batch: dict[str, Any], grid: tuple[int, int],
                device: torch.device) -> torch.Tensor:
        """(B, M, k) ascending grid indices of each clone's visible patches (sample-seeded)."""
        images = batch["image"]
        keep, block = self.num_visible(grid), self.block_size or block_side(grid)
        draws = per_sample_uniform(images.shape[0],
                                   (self.clone_batch, inverse_block_draws(grid, keep, block)),
                                   device, batch_seeds(batch))
        return inverse_block_mask(draws.flatten(0, 1), grid, keep, block).view(
            images.shape[0], self.clone_batch, keep)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        images = batch["image"]
        grid = self.encoder.grid_for(images.shape[-2], images.shape[-1])
        b, m, n = images.shape[0], self.clone_batch, grid[0] * grid[1]
        y = self.targets(images, grid)  # (B, N, D)
        ids = self.visible(batch, grid, images.device).flatten(0, 1)  # (B M, k)
        tokens = self.encoder.embed_patches(images)  # (B, N, D)
        d = tokens.shape[-1]
        tokens = tokens.repeat_interleave(m, dim=0).gather(1, ids[..., None].expand(-1, -1, d))
        feats = self.encoder.encode(tokens, positions=ids, grid=grid)  # (B M, prefix + k, D)
        prefix = self.encoder.num_prefix_tokens
        full = torch.randn(b * m, n, d, device=feats.device, dtype=feats.dtype) * self.noise_std
        full = full.scatter(1, ids[..., None].expand(-1, -1, d), feats[:, prefix:])
        pred = self.decoder(full, grid).view(b, m, n, d)
        masked = torch.ones(b * m, n, dtype=torch.bool, device=ids.device).scatter(1, ids, False)
        loss_reg = regression_loss(pred, y[:, None], masked.view(b, m, n),
                                   b * m * (n - ids.shape[1]))
        out: dict[str, Any] = {"loss_regression": loss_reg,
                               "momentum": self.teacher_momentum(*progress(batch))}
        loss = loss_reg
        if self.cls_weight > 0:
            cls = feats[:, 0].float().view(b, m, d)
            err = (cls - y.mean(dim=1, keepdim=True)).square().sum(-1) / math.sqrt(d)
            out["loss_cls"] = err.mean()
            loss = loss + self.cls_weight * out["loss_cls"]
        with torch.no_grad():
            out["target_std"] = y.flatten(0, 1).std(dim=0).mean()
            out["pred_std"] = pred.detach().float().flatten(0, 2).std(dim=0).mean()
        return {"loss": loss, **out}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update of the teacher."""
        ema_update([(self.teacher, self.encoder)], self.teacher_momentum(step, total_steps))


def resolve(scope: dict[str, Any], encoder: nn.Module) -> dict[str, Any]:
    """A constructor's ``locals()`` over its recipe's defaults (None: unset), checked."""
    recipe = scope["recipe"]
    if recipe not in RECIPES:
        raise VitsslError(f"data2vec2: recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    o = {**RECIPES[recipe], **{k: v for k, v in scope.items() if v is not None and
                               k not in ("self", "encoder", "__class__", "recipe")}}
    depth = len(getattr(encoder, "blocks", ()))
    if depth < 1 or not all(hasattr(b, "mlp") for b in encoder.blocks):
        raise VitsslError("data2vec2 needs an encoder whose `blocks` each have an `mlp`")
    o["top_k"] = int(o["top_k"] or max(1, depth - 2))  # ViT-B: the top 10 of 12
    if not 1 <= o["top_k"] <= depth or int(o["clone_batch"]) < 1:
        raise VitsslError(f"data2vec2: need 1 <= top_k <= {depth} (got {o['top_k']}) and "
                          f"clone_batch >= 1 (got {o['clone_batch']})")
    for key in ("momentum", "end_momentum", "anneal"):
        if o[key] is not None and not 0.0 <= o[key] <= 1.0:
            raise VitsslError(f"data2vec2: {key} must lie in [0, 1], got {o[key]}")
    if o["momentum"] is None and not (o["update_mass"] or 0) > 0:
        raise VitsslError("data2vec2: set momentum, or update_mass > 0 to scale it to the run")
    if o["cls_weight"] < 0 or o["noise_std"] < 0 or not 0 < o["mask_ratio"] < 1:
        raise VitsslError("data2vec2: need cls_weight >= 0, noise_std >= 0 and mask_ratio "
                          "in (0, 1)")
    if o["cls_weight"] > 0 and encoder.num_prefix_tokens < 1:
        raise VitsslError("data2vec2: cls_weight > 0 needs the class token "
                          "(model.class_token=true), or set cls_weight=0")
    return o


@vitssl.hookimpl
def register_objectives(register):
    register("data2vec2", Data2Vec2)
