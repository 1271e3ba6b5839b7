"""The VTAB-1k protocol: each candidate setting trains on ``train800`` and is scored on
``val200``; the best (ties: the earlier) is retrained on ``train800val200`` and scored on
``test``. Protocols (:func:`protocol_settings`): ``paper`` (the ViT paper's sweep, batch 512;
``finetune``'s ``micro_batch`` accumulates it), ``petl`` (the PyTorch VTAB community's AdamW
recipe) and ``quick`` (CPU-sized, two candidates; not comparable to published numbers).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from vitssl.errors import VitsslError
from vitssl.eval.vtab_splits import VtabTask

PROTOCOLS = ("paper", "petl", "quick")
ADAPTATIONS = ("finetune", "linear-probe")


@dataclass(frozen=True)
class Setting:
    """One candidate: a short label and the options handed to the training evaluator."""

    name: str
    options: dict[str, Any] = field(hash=False)


def _sgd(lr: float, steps: int, batch: int, warmup: int = 0) -> Setting:
    return Setting(f"lr={lr:g},steps={steps}",
                   {"optimizer": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 0.0,
                    "steps": steps, "batch_size": batch, "warmup_steps": warmup,
                    "schedule": "cosine", "grad_clip": 1.0})


def protocol_settings(protocol: str) -> list[Setting]:
    """The candidate settings of a protocol, in sweep order."""
    if protocol == "paper":
        return [_sgd(lr, steps, 512) for lr in (0.001, 0.01) for steps in (500, 2500)]
    if protocol == "petl":
        return [Setting("adamw,lr=0.001,epochs=100",
                        {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4,
                         "epochs": 100, "batch_size": 64, "warmup_epochs": 10,
                         "schedule": "cosine"})]
    if protocol == "quick":
        return [_sgd(lr, 100, 32, warmup=10) for lr in (0.01, 0.03)]
    raise VitsslError(f"unknown VTAB protocol '{protocol}'; accepted: {', '.join(PROTOCOLS)}")


def pick_top1(metrics: dict[str, float], evaluator: str) -> float:
    """The test top-1 an evaluator reported: ``<evaluator>_top1``, ``top1`` or ``test_top1``."""
    for key in (f"{evaluator.replace('-', '_')}_top1", "top1", "test_top1"):
        if key in metrics:
            return float(metrics[key])
    raise VitsslError(f"evaluator '{evaluator}' reported {sorted(metrics)}; expected a test "
                      f"top-1 as '{evaluator.replace('-', '_')}_top1' or 'top1'")


@dataclass
class VtabOutcome:
    """What the protocol found on one task."""

    top1: float
    setting: Setting
    val_top1: dict[str, float]
    time_s: float

    def metrics(self) -> dict[str, float]:
        """Flat float metrics (the evaluator contract)."""
        out = {"vtab_top1": self.top1, "vtab_time_s": self.time_s}
        if self.val_top1:
            out["vtab_val200_top1"] = self.val_top1[self.setting.name]
        for key in ("lr", "steps", "epochs"):
            if key in self.setting.options:
                out[f"vtab_chosen_{key}"] = float(self.setting.options[key])
        for name, value in self.val_top1.items():
            out[f"vtab_val200_top1[{name}]"] = value
        return out


def run_protocol(encoder: nn.Module, task: VtabTask, settings: list[Setting],
                 train_and_score: Callable[[nn.Module, Any, Setting], float],
                 log: Callable[[str], None] = lambda _: None,
                 copy_encoder: bool = True) -> VtabOutcome:
    """Select a setting on val200, retrain on train800val200, score on test.

    ``train_and_score(encoder, task, setting)`` trains on ``task.train`` and returns top-1
    (percent) on ``task.test``, each call on its own deep copy of ``encoder`` unless
    ``copy_encoder`` is false (a delegate that copies, or keeps cached frozen features).
    """
    fresh = copy.deepcopy if copy_encoder else (lambda module: module)
    if not settings:
        raise VitsslError("the VTAB protocol needs at least one candidate setting")
    start = time.monotonic()
    val: dict[str, float] = {}
    if len(settings) > 1:
        selection = task.selection_task()
        for i, setting in enumerate(settings, start=1):
            t0 = time.monotonic()
            val[setting.name] = train_and_score(fresh(encoder), selection, setting)
            log(f"{task.name}: setting {i}/{len(settings)} {setting.name}: val200 top-1 "
                f"{val[setting.name]:.2f} ({time.monotonic() - t0:.0f}s)")
        best = max(settings, key=lambda s: val[s.name])  # max keeps the first of ties
    else:
        best = settings[0]
    t0 = time.monotonic()
    top1 = train_and_score(fresh(encoder), task.final_task(), best)
    log(f"{task.name}: {best.name} on train800val200: test top-1 {top1:.2f} "
        f"({time.monotonic() - t0:.0f}s)")
    return VtabOutcome(top1, best, val, time.monotonic() - start)
