"""Learning rate: linear warm-up from 0, then cosine or linear decay to ``min_lr``."""

from __future__ import annotations

import math

import torch

from vitssl.errors import VitsslError

SCHEDULES = ("cosine", "linear")


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int,
          min_lr: float = 0.0, schedule: str = "cosine") -> float:
    """The learning rate of optimiser step ``step`` (0-based)."""
    if schedule not in SCHEDULES:
        raise VitsslError(f"unknown train.schedule '{schedule}'; accepted: "
                          f"{', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        scale = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        scale = 1.0 - progress
    return min_lr + (base_lr - min_lr) * scale


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int,
                    min_lr: float = 0.0, schedule: str = "cosine"
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping :func:`lr_at` (relative to each group's base lr)."""
    base = optimizer.param_groups[0]["lr"]
    kw = dict(base_lr=base, total_steps=total_steps, warmup_steps=warmup_steps, min_lr=min_lr,
              schedule=schedule)
    lr_at(0, **kw)  # an unknown schedule fails now
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, **kw) / base)
