"""``ibot``: masked image modelling with an online tokenizer (Zhou et al. 2022, bytedance/ibot).

DINO's self-distillation (``dino``) on the pooled output, plus
self-distillation of masked patches. The student sees its two global crops
with block-wise masked patches (:mod:`vitssl.ssl.masking`): their patch
embeddings become a learnable ``mask_token`` before the position embeddings
are added; the EMA teacher sees the same crops unmasked. One head (a
:class:`~vitssl.ssl.distillation.DinoHead`) projects the pooled feature and
every patch token (as two batches: with ``use_bn`` each has its own BatchNorm
statistics); the loss is::

    lambda1 * cross_view_loss(pooled, teacher targets of the other global view)
    + lambda2 * masked_patch_loss(student patches of view v, teacher patches of view v)

where :func:`masked_patch_loss` is iBOT's ``iBOTLoss`` patch term: per view, the
cross-entropy at the masked positions, averaged per image over its masked
patches, then over images (an image without masks counts 0). Patch targets
have their own temperature schedule (``teacher_patch_temp``, warmed up from
``warmup_teacher_patch_temp`` after ``pred_start`` of the run) and their own
centre (``patch_center``; Sinkhorn–Knopp balances every teacher patch token of
the step). ``shared_head=True`` (iBOT's ViT configs) projects patches with the
pooled feature's prototypes; else a separate layer of ``patch_out_dim``.

Masks: per global crop, a ratio from ``pred_ratio`` / ``pred_ratio_var`` (iBOT's
``get_pred_ratio``), then ``pred_shape`` ``"block"`` (BEiT's algorithm) or
``"rand"``, drawn from a generator seeded by the sample's ``"sample_seed"``, so
a sample is masked the same way on any rank, batch or resumed run.

``recipe="paper"`` (``PAPER``) is the published ViT-S/16 run with main_ibot.py's
defaults (``configs/ibot-vit-s16.yaml``); ``recipe="auto"`` (default, ``AUTO``) takes
DINO's short-run choices (``SHORT_RUN``) for both heads and keeps the paper's
masking. The teacher (built without drop-path, as in iBOT) is the exported encoder.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

import vitssl
from vitssl.errors import VitsslError
from vitssl.ssl.batch import batch_seeds, progress
from vitssl.ssl.distillation import cross_view_loss, prototypes
from vitssl.ssl.ema import teacher_copy
from vitssl.ssl.masking import block_mask, draw_ratio, random_mask
from vitssl.ssl.self_distillation import (
    SHORT_RUN,
    SelfDistillation,
    teacher_metrics,
    teacher_stats,
    warmup,
)

PAPER: dict[str, Any] = dict(
    small_out_dim=1024, norm_last_layer=False, use_bn=False, teacher_temp=0.07,
    warmup_teacher_temp=0.04, teacher_patch_temp=0.07, warmup_teacher_patch_temp=0.04,
    teacher_temp_warmup=30 / 800, momentum=0.996, update_mass=2.0, centering="ema",
    center_init="zeros", koleo_weight=0.0, num_local=10, global_scale=(0.25, 1.0),
    local_scale=(0.05, 0.25), freeze_last_layer=1 / 800, pred_ratio=(0.0, 0.3),
    pred_ratio_var=(0.0, 0.2), color=True)
AUTO: dict[str, Any] = {
    **PAPER, **SHORT_RUN, "teacher_patch_temp": SHORT_RUN["teacher_temp"],
    "warmup_teacher_patch_temp": SHORT_RUN["warmup_teacher_temp"],
    "local_scale": (0.05, 0.4), "freeze_last_layer": 0.01}
SHAPES = ("block", "rand")


def masked_patch_loss(student: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                      student_temp: float) -> torch.Tensor:
    """Mean over images of the mean over masked patches of ``-sum_k t log_softmax(s / T)``.

    ``student`` (B, N, K) patch logits, ``targets`` (B, N, K) the teacher's
    distributions, ``mask`` (B, N) bool; unmasked positions are never read.
    """
    ce = -(targets * torch.log_softmax(student / student_temp, dim=-1)).sum(dim=-1)
    ce = torch.where(mask, ce, torch.zeros_like(ce))
    return (ce.sum(dim=-1) / mask.sum(dim=-1).clamp_min(1)).mean()


def _floats(value: float | list[float] | tuple[float, ...]) -> list[float]:
    return [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]


class Ibot(SelfDistillation):
    """iBOT around an encoder; ``forward(batch)`` reads ``batch["views"]``."""

    name = "ibot"
    recipes = {"paper": PAPER, "auto": AUTO}
    large_out_dim = 8192

    def __init__(self, encoder: nn.Module, recipe: str = "auto", out_dim: int | None = None,
                 patch_out_dim: int | None = None, hidden_dim: int | None = None,
                 bottleneck_dim: int | None = None, shared_head: bool = True,
                 norm_last_layer: bool | None = None, student_temp: float = 0.1,
                 teacher_temp: float | None = None, warmup_teacher_temp: float | None = None,
                 teacher_patch_temp: float | None = None,
                 warmup_teacher_patch_temp: float | None = None,
                 teacher_temp_warmup: float | None = None, momentum: float | None = None,
                 update_mass: float | None = None, center_momentum: float = 0.9,
                 freeze_last_layer: float | None = None, lambda1: float = 1.0,
                 lambda2: float = 1.0, pred_shape: str = "block",
                 pred_ratio: float | list[float] | None = None,
                 pred_ratio_var: float | list[float] | None = None,
                 pred_aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
                 pred_start: float = 0.0, num_local: int | None = None,
                 local_size: int | None = None, global_scale: tuple[float, float] | None = None,
                 local_scale: tuple[float, float] | None = None, color: bool | None = None,
                 hflip: bool | None = None, use_bn: bool | None = None,
                 center_init: str | None = None, centering: str | None = None,
                 sinkhorn_iterations: int = 3, koleo_weight: float | None = None) -> None:
        o = self.resolve(locals())
        ratios = _floats(o["pred_ratio"])
        spread = _floats(o["pred_ratio_var"])
        spread = spread * len(ratios) if len(spread) == 1 else spread
        if len(spread) != len(ratios) or not all(
                0.0 <= r - v and r + v < 1.0 for r, v in zip(ratios, spread, strict=True)):
            raise VitsslError(f"ibot: pred_ratio {ratios} and pred_ratio_var {spread} must "
                              f"match in length with 0 <= ratio - var and ratio + var < 1")
        lo, hi = (float(a) for a in pred_aspect_ratio)
        if pred_shape not in SHAPES or not 0 < lo <= hi or not 0.0 <= pred_start <= 1.0 \
                or min(lambda1, lambda2) < 0:
            raise VitsslError(f"ibot: need pred_shape in {', '.join(SHAPES)} (got "
                              f"{pred_shape!r}), 0 < pred_aspect_ratio low <= high, pred_start "
                              f"in [0, 1] and lambda1, lambda2 >= 0")
        super().__init__(encoder, o)
        out_dim = self.head.last_layer.out_features
        patch_dim = out_dim if shared_head else int(patch_out_dim or out_dim)
        self.add_centre("patch_center", patch_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        self.shared_head = bool(shared_head)
        if not self.shared_head:
            self.patch_last_layer = prototypes(self.head.last_layer.in_features, patch_dim,
                                               bool(o["norm_last_layer"]))
            self.teacher_patch_last_layer = teacher_copy(self.patch_last_layer)
            self.ema_pairs.append(("teacher_patch_last_layer", "patch_last_layer"))
            self.last_layers.append("patch_last_layer")
        self.teacher_patch_temp = float(o["teacher_patch_temp"])
        self.warmup_teacher_patch_temp = float(o["warmup_teacher_patch_temp"])
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)
        self.pred_shape, self.pred_ratio, self.pred_ratio_var = pred_shape, ratios, spread
        self.pred_aspect_ratio, self.pred_start = (lo, hi), float(pred_start)

    # -- masks and schedules -----------------------------------------------------------------
    def masks(self, batch_size: int, views: int, grid: tuple[int, int],
              seeds: list[int] | None = None, step: int = 0,
              total_steps: int = 1) -> torch.Tensor:
        """(B, views, N) bool masks, one generator per sample seed (fresh seeds without)."""
        n = grid[0] * grid[1]
        out = np.zeros((batch_size, views, n), dtype=bool)
        if step < self.pred_start * total_steps:
            return torch.from_numpy(out)
        if seeds is None:
            seeds = torch.randint(0, 2 ** 62, (batch_size,)).tolist()
        for i, seed in enumerate(seeds):
            rng = random.Random(f"ibot-mask:{seed}")
            for v in range(views):
                count = draw_ratio(self.pred_ratio, self.pred_ratio_var, rng) * n
                mask = block_mask(grid, count, rng, self.pred_aspect_ratio) \
                    if self.pred_shape == "block" else random_mask(grid, count, rng)
                out[i, v] = mask.reshape(-1)
        return torch.from_numpy(out)

    def patch_temperature(self, step: int, total_steps: int) -> float:
        """The warm-up of ``teacher_temperature``, starting at ``pred_start`` of the run."""
        start = self.pred_start * total_steps
        if step < start:
            return self.warmup_teacher_patch_temp
        return warmup(self.warmup_teacher_patch_temp, self.teacher_patch_temp,
                      self.teacher_temp_warmup, step - start, total_steps)

    # -- the objective -----------------------------------------------------------------------
    def project(self, features: torch.Tensor, teacher: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features (B, T, D) -> (pooled (B, D), cls logits (B, K), patch logits (B, N, K'))."""
        encoder = self.teacher_encoder if teacher else self.encoder
        head = self.teacher_head if teacher else self.head
        layer = head.last_layer if self.shared_head else \
            (self.teacher_patch_last_layer if teacher else self.patch_last_layer)
        pooled, patches = encoder.forward_head(features), features[:, encoder.num_prefix_tokens:]
        b, n = patches.shape[:2]
        # Pooled rows and patch rows go through the head separately, so that with
        # ``use_bn`` each kind is normalised by its own batch statistics.
        cls_logits = head.last_layer(head.project(pooled))
        return pooled, cls_logits, layer(head.project(patches.flatten(0, 1))).view(b, n, -1)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        globals_, local = self.crops(batch)
        step, total = progress(batch)
        b, g = globals_.shape[:2]
        images = globals_.flatten(0, 1)  # (B G, 3, S, S), b-major
        grid = self.encoder.grid_for(images.shape[-2], images.shape[-1])
        mask = self.masks(b, g, grid, batch_seeds(batch), step, total)
        mask = mask.flatten(0, 1).to(images.device, non_blocking=True)  # (B G, N)
        with torch.no_grad():
            _, teacher_cls, teacher_patch = self.project(
                self.teacher_encoder.forward_features(images), teacher=True)
        tokens = self.encoder.embed_patches(images)  # (B G, N, D), before position embeddings
        tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        pooled, student_cls, student_patch = self.project(self.encoder.encode(tokens, grid=grid))
        student = [student_cls.view(b, g, -1), *self.local_logits(local)]
        temp, patch_temp = self.teacher_temperature(step, total), \
            self.patch_temperature(step, total)
        cls_targets = self.targets(teacher_cls.float(), "center", temp)
        patch_targets = self.targets(teacher_patch.float().flatten(0, 1), "patch_center",
                                     patch_temp)
        loss_cls = cross_view_loss(torch.cat(student, dim=1).float(),
                                   cls_targets.view(b, g, -1), self.student_temp)
        loss_patch = masked_patch_loss(student_patch.float(),
                                       patch_targets.view_as(student_patch), mask,
                                       self.student_temp)
        loss = self.lambda1 * loss_cls + self.lambda2 * loss_patch
        out = {"loss_cls": loss_cls.detach(), "loss_patch": loss_patch.detach(),
               **teacher_metrics(cls_targets),
               "patch_entropy": teacher_stats(patch_targets)[0],
               "mask_ratio": mask.float().mean(), "teacher_temp": temp}
        loss = self.with_koleo(loss, out, pooled.view(b, g, -1)[:, 0])
        return {"loss": loss, **out}


@vitssl.hookimpl
def register_objectives(register):
    register("ibot", Ibot)
