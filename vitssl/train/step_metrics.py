"""Losses and metrics kept on the device until a logging step, and the non-finite check.

Metric policy: an objective's metrics are 0-d tensors (left on the device)
or host numbers; the loop reads every pending step's values in one transfer
at logging and checkpoint steps - its one host sync between them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from vitssl.errors import VitsslError
from vitssl.train import distributed
from vitssl.train.runlog import RunLog


def as_metrics(out: dict[str, Any]) -> dict[str, torch.Tensor | float]:
    """An objective's metrics (all outputs but the loss), tensors left on their device."""
    return {k: (v.detach().double() if isinstance(v, torch.Tensor) else float(v))
            for k, v in sorted(out.items())
            if k != "loss" and isinstance(v, (int, float, torch.Tensor))}


class DeferredMetrics:
    """Steps whose loss and metrics are still on the device, read every ``every`` steps."""

    def __init__(self, ctx: distributed.Context, every: int, checkpoint_every: int,
                 total_steps: int) -> None:
        self.ctx, self.every = ctx, max(1, every)
        self.checkpoint_every, self.total_steps = checkpoint_every, total_steps
        self.pending: list[dict[str, Any]] = []
        self.values: list[dict[str, float]] = []

    def due(self, step: int) -> bool:
        """Whether step ``step`` (counted from 1) is read: logging and checkpoint steps."""
        return step % self.every == 0 or self.saves(step)

    def saves(self, step: int) -> bool:
        return step % self.checkpoint_every == 0 or step == self.total_steps

    def add(self, step: int, loss: torch.Tensor, metrics: dict[str, Any]) -> None:
        self.pending.append({"step": step, "loss": loss, "metrics": metrics})

    def check(self, last_good: Path | None) -> None:
        """Read the pending steps (rank-averaged, one transfer); raise if a loss is not finite.

        Called before the newest step's update is applied, so a bad newest step
        is never applied and a bad earlier one is never saved.
        """
        values: list[torch.Tensor] = []
        for entry in self.pending:
            for v in (entry["loss"], *entry["metrics"].values()):
                values.append(v.double() if isinstance(v, torch.Tensor) else
                              torch.tensor(v, dtype=torch.float64))
        flat = distributed.all_mean(torch.stack([v.to(self.ctx.device) for v in values]),
                                    self.ctx).tolist()
        self.values, i = [], 0
        for entry in self.pending:
            names = ["loss", *entry["metrics"]]
            self.values.append(dict(zip(names, flat[i:i + len(names)], strict=True)))
            i += len(names)
        bad = [(e["step"], v["loss"]) for e, v in zip(self.pending, self.values, strict=True)
               if not math.isfinite(v["loss"])]
        if bad:
            (bad_step, bad_loss), newest = bad[0], self.pending[-1]["step"]
            kept = f"the last good checkpoint is {last_good}" if last_good else \
                "no checkpoint was written yet"
            what = "without applying it" if bad_step == newest else \
                f"at step {newest} without saving what followed it"
            raise VitsslError(f"loss became non-finite ({bad_loss}) at step {bad_step}; "
                              f"stopping {what}; {kept} (try a lower train.lr or "
                              f"train.precision=fp32)")

    def flush(self, log: RunLog, batch_size: int) -> None:
        """Log the steps read by :meth:`check` (each with its ``lr`` and ``dt``)."""
        for entry, value in zip(self.pending, self.values, strict=True):
            log.log({"step": entry["step"], **value, "lr": entry["lr"],
                     "images_per_s": batch_size / entry["dt"]})
        self.pending, self.values = [], []
