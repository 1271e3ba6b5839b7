"""The closed-form check of an EMA teacher, shared by the tests of objectives that have one."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vitssl.ssl.ema import cosine_momentum
from vitssl.train.optim import build_optimizer


def train_and_check_ema(objective: nn.Module, teachers: list[nn.Module],
                        students: list[nn.Module], batch: Callable[[int, int], dict],
                        base: float, steps: int = 5,
                        each_step: Callable[[], None] = lambda: None,
                        schedule: Callable[[int, int], float] | None = None) -> set[int]:
    """Train ``steps`` steps; assert the teachers got no gradient, stayed out of the optimiser
    and are ``m t + (1 - m) s`` of the students at every step (cosine from ``base``, or
    ``schedule(step, steps)``).

    Returns the ids of the parameters the optimiser holds.
    """
    optimizer = build_optimizer(objective, lr=1e-2, weight_decay=0.0)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    teacher = [p for m in teachers for p in m.parameters()]
    assert teacher and not any(id(p) in in_optimizer for p in teacher)
    expected = [p.detach().clone() for p in teacher]
    for step in range(steps):
        optimizer.zero_grad()
        objective(batch(step, steps))["loss"].backward()
        assert all(p.grad is None for p in teacher)
        each_step()
        objective.before_optimizer_step(step, steps)
        optimizer.step()
        objective.after_optimizer_step(step, steps)
        m = cosine_momentum(base, step, steps) if schedule is None else schedule(step, steps)
        student = [p for s in students for p in s.parameters()]
        expected = [m * t + (1 - m) * s.detach() for t, s in zip(expected, student, strict=True)]
    for got, want in zip(teacher, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert any(not torch.equal(t, s) for t, s in zip(
        teachers[0].parameters(), students[0].parameters(), strict=True))  # moved apart
    return in_optimizer
