"""Losses and metrics (0-d tensors or host numbers) kept on the device until a logging or
checkpoint step reads them all in one transfer, and the non-finite check."""

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
    """Steps whose loss and metrics are still on the device, until :meth:`check` reads them."""

    def __init__(self, ctx: distributed.Context) -> None:
        self.ctx = ctx
        self.pending: list[dict[str, Any]] = []
        self.values: list[dict[str, float]] = []

    def add(self, step: int, loss: torch.Tensor, metrics: dict[str, Any], lr: float) -> None:
        self.pending.append({"step": step, "loss": loss, "metrics": metrics, "lr": lr})

    def took(self, seconds: float) -> None:
        """The newest step took ``seconds`` (logged as images/s)."""
        self.pending[-1]["dt"] = seconds

    def check(self, last_good: Path | None) -> None:
        """Read the pending steps (rank-averaged); raise if a loss is not finite (before the
        newest step's update, so a bad step is never applied nor a later one saved)."""
        values = [torch.as_tensor(v, dtype=torch.float64).to(self.ctx.device)
                  for e in self.pending for v in (e["loss"], *e["metrics"].values())]
        flat = iter(distributed.all_mean(torch.stack(values), self.ctx).tolist())
        self.values = [{name: next(flat) for name in ["loss", *e["metrics"]]}
                       for e in self.pending]
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
