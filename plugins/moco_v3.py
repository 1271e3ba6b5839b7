"""``moco-v3``: momentum contrast for ViTs (Chen, Xie & He 2021, facebookresearch/moco-v3).

The base encoder with a 3-layer projector and a 2-layer predictor maps each
of two views to queries ``q1, q2``; a momentum (EMA) copy of the encoder and
projector maps them to keys ``k1, k2``, without gradient. Keys are gathered
from every rank (in rank order), and each query's positive is the key of the
same image's other view, every other key a negative::

    ctr(q, k) = 2 tau * CE(normalize(q) @ normalize(k_all).T / tau, rank * B + arange(B))
    loss = ctr(q1, k2) + ctr(q2, k1)

Heads (:func:`vitssl.ssl.heads.mlp`): projector Linear-BN-ReLU-Linear-BN-ReLU-
Linear-BN(no affine), predictor Linear-BN-ReLU-Linear, as in the reference's
ViT builder. BatchNorm statistics span the global batch under DDP
(:class:`~vitssl.ssl.heads.GlobalBatchNorm1d`, the reference's SyncBatchNorm),
so 2 ranks compute what one process does with their joint batch. Dims follow
the paper (hidden 4096, out 256) for encoders of width >= 384 and are scaled
down for narrower ones (hidden 512, out 128), as ``dino`` does.

Momentum: cosine from ``momentum`` to 1 over the run (the reference's
per-iteration schedule). The default (``momentum=None``) picks the base so that
the run's total update mass Σ(1 − m) is ``update_mass``, capped at the paper's 0.99
(:func:`vitssl.ssl.ema.run_scaled_momentum`; benchmarks/RESULTS.md, "MoCo v3").

Position embeddings: the reference's fixed 2-D sin-cos table (``pos_embed =
"sincos"``, what ``model.pos_embed=auto`` picks; ``model.pos_embed=learned``
keeps the ViT's).

The bias of the encoder's last norm is frozen: the projector's first BatchNorm
removes the constant it adds, so the loss is invariant to it.
``freeze_patch_embed`` is the paper's "stop-grad conv1": the patch projection
keeps its random (Xavier-uniform) initialisation. The base encoder is exported
and evaluated: the reference's linear probe and fine-tuning load
``module.base_encoder``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import vitssl
from vitssl.errors import VitsslError
from vitssl.ssl.batch import progress, square_side, views
from vitssl.ssl.distributed import gather_rows
from vitssl.ssl.ema import ema_update, teacher_copy, teacher_momentum
from vitssl.ssl.heads import freeze_last_norm_bias, mlp
from vitssl.ssl.views import TwoViews, data_allows

SMALL_IMAGE = 64  # below this side the default crops are milder than BYOL's
PAPER_MOMENTUM = 0.99  # the reference's base momentum: the cap of the run-scaled default


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float,
                     offset: int = 0) -> torch.Tensor:
    """InfoNCE of queries (B, D) against keys (N, D), positives at ``offset + i``; x 2 tau."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2.0 * temperature)


class MocoV3(vitssl.Objective):
    """MoCo v3 around an encoder; ``forward(batch)`` reads ``batch["views"]["pair"]``."""

    pos_embed = "sincos"

    def __init__(self, encoder: nn.Module, hidden_dim: int | None = None,
                 out_dim: int | None = None, temperature: float = 0.2,
                 momentum: float | None = None, update_mass: float = 80.0,
                 freeze_patch_embed: bool = True,
                 crop_scale: tuple[float, float] | None = None, color: bool | None = None,
                 hflip: bool | None = None) -> None:
        super().__init__()
        small = encoder.embed_dim < 384
        hidden_dim = int(hidden_dim or (512 if small else 4096))
        out_dim = int(out_dim or (128 if small else 256))
        if min(hidden_dim, out_dim) < 1:
            raise VitsslError("moco-v3: hidden_dim and out_dim must be >= 1")
        if temperature <= 0:
            raise VitsslError(f"moco-v3: temperature must be > 0, got {temperature}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise VitsslError(f"moco-v3: momentum must lie in [0, 1], got {momentum}")
        if update_mass <= 0:
            raise VitsslError(f"moco-v3: update_mass must be > 0, got {update_mass}")
        if freeze_patch_embed:
            proj = getattr(encoder.patch_embed, "proj", None)
            if not isinstance(proj, nn.Conv2d):
                raise VitsslError("moco-v3: freeze_patch_embed needs the linear patch stem "
                                  "(patch_embed.proj); set freeze_patch_embed=false")
            proj.requires_grad_(False)
        freeze_last_norm_bias(encoder)  # the projector's first BatchNorm removes it
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, hidden_dim, out_dim, layers=3)
        self.predictor = mlp(out_dim, hidden_dim, out_dim, layers=2, last_bn=False)
        self.momentum_encoder = teacher_copy(encoder)
        self.momentum_projector = teacher_copy(self.projector)
        self.temperature = float(temperature)
        self.momentum = None if momentum is None else float(momentum)
        self.update_mass = float(update_mass)
        self.crop = dict(scale=None if crop_scale is None else tuple(crop_scale),
                         color=color, hflip=hflip)

    def views(self, size: tuple[int, int], data: Any = None) -> TwoViews:
        """BYOL's two views at the model's (square) size; flip and colour as the data allows.
        Below 64 px the default crops are milder (60-100 %; benchmarks/RESULTS.md)."""
        height = square_side("moco-v3", size)
        scale = self.crop["scale"] or ((0.6, 1.0) if height < SMALL_IMAGE else (0.08, 1.0))
        return TwoViews(height, scale=scale, hflip=data_allows(self.crop["hflip"], data, "hflip"),
                        color=data_allows(self.crop["color"], data, "color"))

    def key_momentum(self, step: int, total_steps: int) -> float:
        """Cosine to 1 from ``momentum``, or from the run-scaled base when it is unset."""
        return teacher_momentum(step, total_steps, self.momentum, self.update_mass,
                                PAPER_MOMENTUM)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        pair = views(batch, "pair", "moco-v3")  # (B, 2, 3, S, S)
        b = pair.shape[0]
        x = pair.transpose(0, 1).flatten(0, 1)  # (2B, ...): view 1 of every image, then view 2
        # Each view's batch goes through the heads on its own, as in the reference: the
        # BatchNorm statistics are those of one view's (global) batch.
        feats = self.encoder(x)
        q1, q2 = (self.predictor(self.projector(f)) for f in feats.split(b))
        with torch.no_grad():
            keys = self.momentum_encoder(x)
            k1, k2 = (self.momentum_projector(f) for f in keys.split(b))
            (k1_all, offset), (k2_all, _) = gather_rows(k1), gather_rows(k2)
        loss = contrastive_loss(q1, k2_all, self.temperature, offset) + \
            contrastive_loss(q2, k1_all, self.temperature, offset)
        with torch.no_grad():
            labels = torch.arange(b, device=q1.device) + offset
            hits = (F.normalize(q1.float(), dim=1) @ F.normalize(k2_all.float(), dim=1).T
                    ).argmax(dim=1) == labels
        return {"loss": loss, "loss_contrastive": loss.detach(),
                "contrastive_acc": hits.float().mean(),
                "momentum": self.key_momentum(*progress(batch))}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update of the momentum encoder and projector."""
        ema_update([(self.momentum_encoder, self.encoder),
                    (self.momentum_projector, self.projector)],
                   self.key_momentum(step, total_steps))


@vitssl.hookimpl
def register_objectives(register):
    register("moco-v3", MocoV3)
