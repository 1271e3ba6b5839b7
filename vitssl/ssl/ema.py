"""An exponential moving average of a student's weights (a teacher or momentum encoder)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """Cosine from ``base`` at step 0 to 1 at the last step (DINO, MoCo v3, BYOL)."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1.0) / 2.0


@torch.no_grad()
def ema_update(teacher: Iterable[torch.Tensor], student: Iterable[torch.Tensor],
               momentum: float) -> None:
    """``t <- m t + (1 - m) s`` for each pair of tensors, in place."""
    for t, s in zip(teacher, student, strict=True):
        t.lerp_(s.detach(), 1.0 - momentum)
