"""An EMA teacher (or momentum encoder): a frozen copy of a student and its schedule."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn

from vitssl.models.layers import without_dropout


def teacher_copy(student: nn.Module) -> nn.Module:
    """A copy of ``student`` without dropout or drop-path and without gradients."""
    return without_dropout(copy.deepcopy(student)).requires_grad_(False)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """Cosine from ``base`` at step 0 to 1 at the last step (DINO, MoCo v3, BYOL)."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1.0) / 2.0


def run_scaled_momentum(total_steps: int, update_mass: float = 2.0,
                        cap: float = 0.996) -> float:
    """Base momentum of a cosine schedule to 1 whose Σ(1 − m) over the run is ``update_mass``.

    The cosine from ``base`` to 1 sums to about ``(1 - base) * T / 2``, so
    ``base = 1 - 2 * update_mass / T``, capped at ``cap`` (the paper's 0.996); the
    teacher keeps about ``e ** -update_mass`` of its random initialisation.
    """
    if total_steps < 1 or update_mass <= 0:
        raise ValueError("run_scaled_momentum needs total_steps >= 1 and update_mass > 0")
    return min(cap, max(0.0, 1.0 - 2.0 * update_mass / total_steps))


def teacher_momentum(step: int, total_steps: int, momentum: float | None,
                     update_mass: float, cap: float) -> float:
    """Cosine to 1 from ``momentum``, or from the run-scaled base when it is None."""
    base = run_scaled_momentum(total_steps, update_mass, cap) if momentum is None else momentum
    return cosine_momentum(base, step, total_steps)


@torch.no_grad()
def ema_update(pairs: Iterable[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """``t <- m t + (1 - m) s`` for every parameter of each (teacher, student) pair."""
    for teacher, student in pairs:
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.lerp_(s.detach(), 1.0 - momentum)
