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


class NonFiniteLoss(VitsslError):
    """A loss or one of its ``loss_*`` terms became non-finite at ``step``."""

    def __init__(self, message: str, step: int, terms: dict[str, float]) -> None:
        super().__init__(message)
        self.step, self.terms = step, terms


def non_finite_terms(values: dict[str, float]) -> dict[str, float]:
    """The loss and ``loss_*`` terms of one step's values that are not finite."""
    return {k: v for k, v in values.items()
            if (k == "loss" or k.startswith("loss_")) and not math.isfinite(v)}


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
        """Read the pending steps (rank-averaged); raise :class:`NonFiniteLoss` naming every
        non-finite term of the first bad step (before the newest step's update, so a bad
        step is never applied nor a later one saved)."""
        values = [torch.as_tensor(v, dtype=torch.float64).to(self.ctx.device)
                  for e in self.pending for v in (e["loss"], *e["metrics"].values())]
        flat = iter(distributed.all_mean(torch.stack(values), self.ctx).tolist())
        self.values = [{name: next(flat) for name in ["loss", *e["metrics"]]}
                       for e in self.pending]
        bad = [(e["step"], non_finite_terms(v))
               for e, v in zip(self.pending, self.values, strict=True) if non_finite_terms(v)]
        if bad:
            (bad_step, terms), newest = bad[0], self.pending[-1]["step"]
            kept = f"the last good checkpoint is {last_good}" if last_good else \
                "no checkpoint was written yet"
            what = "without applying it" if bad_step == newest else \
                f"at step {newest} without saving what followed it"
            named = ", ".join(f"{k}={v}" for k, v in terms.items())
            raise NonFiniteLoss(f"loss became non-finite ({named}) at step {bad_step}; "
                                f"stopping {what}; {kept} (try a lower train.lr, "
                                f"train.precision=fp32 or train.on_nonfinite=rollback)",
                                bad_step, terms)

    def flush(self, log: RunLog, batch_size: int,
              extra: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Log the steps read by :meth:`check` (each with its ``lr`` and ``dt``), ``extra``
        (the monitor's values) in the newest one's record; return the records."""
        records = [{"step": entry["step"], **value, "lr": entry["lr"],
                    "images_per_s": batch_size / entry["dt"]}
                   for entry, value in zip(self.pending, self.values, strict=True)]
        if records and extra:
            records[-1].update(extra)
        for record in records:
            log.log(record, show=bool(extra) and record is records[-1])
        self.pending, self.values = [], []
        return records
