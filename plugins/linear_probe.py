"""``linear-probe``: a linear classifier on frozen features, settings chosen on validation.

Every (learning rate, weight decay) pair of the sweep trains on the training set less a
validation split and is scored on it; the best is retrained on the whole training set and
scored once on test. The classifier is BatchNorm without affine then a linear layer (as MAE),
trained with SGD (momentum 0.9, cosine) or full-batch L-BFGS, or solved in closed form
(``optimizer=ridge``: ``weight_decay`` is the λ, swept over 2⁻⁶ … 2¹⁴; a fixed λ such as
few-shot's 2¹⁰ favours some feature widths). Reported (percent): ``linear_probe_top1`` and,
after a sweep, ``linear_probe_val_top1``; the chosen ``linear_probe_lr`` / ``linear_probe_wd``.

``features``: which feature of each image is used (:mod:`vitssl.eval.features`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

import vitssl
from vitssl.errors import VitsslError
from vitssl.eval.features import numbers, parse_features, task_features
from vitssl.eval.linear import (
    OPTIMIZERS,
    LinearClassifiers,
    split_train_val,
    train_lbfgs,
    train_ridge,
    train_sgd,
)
from vitssl.eval.metrics import top1

# optimizer -> the default weight-decay sweep (for ridge: the λ of its penalty λ‖W‖²)
WEIGHT_DECAYS = {"sgd": (0.0, 1e-4, 1e-3), "lbfgs": (0.0, 1e-4, 1e-3),
                 "ridge": tuple(2.0**k for k in range(-6, 15, 2))}


class LinearProbe:
    """BatchNorm + linear classifier on frozen features; lr / weight-decay sweep on a val split."""

    def __init__(self, optimizer: str = "sgd", lr: Sequence[float] | float = (0.01, 0.1, 1.0),
                 weight_decay: Sequence[float] | float | None = None,
                 epochs: int = 100, batch_size: int = 256, lbfgs_iters: int = 300,
                 val_fraction: float = 0.2, seed: int = 0, feature_batch_size: int = 256,
                 progress: bool = True, features: str = "pooled") -> None:
        self.features = parse_features(features)
        if optimizer not in OPTIMIZERS:
            raise VitsslError(f"linear-probe option 'optimizer' must be one of "
                              f"{', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise VitsslError(f"linear-probe option 'val_fraction' must be in (0, 1), "
                              f"got {val_fraction!r}")
        self.optimizer = optimizer
        # L-BFGS runs a line search and ridge has none: no learning rate to sweep.
        option = "linear-probe option '{}'".format
        self.lrs = numbers(lr, option("lr"), float) if optimizer == "sgd" else (1.0,)
        self.wds = (WEIGHT_DECAYS[optimizer] if weight_decay is None
                    else numbers(weight_decay, option("weight_decay"), float))
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.lbfgs_iters, self.val_fraction = int(lbfgs_iters), float(val_fraction)
        self.seed, self.feature_batch_size = int(seed), int(feature_batch_size)
        self.progress = bool(progress)

    def _fit(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
             settings: list[tuple[float, float]]) -> LinearClassifiers:
        if self.optimizer == "ridge":
            return train_ridge(x, y, num_classes, [wd for _, wd in settings])
        if self.optimizer == "lbfgs":
            return train_lbfgs(x, y, num_classes, [wd for _, wd in settings],
                               iterations=self.lbfgs_iters)
        return train_sgd(x, y, num_classes, settings, epochs=self.epochs,
                         batch_size=self.batch_size, seed=self.seed)

    def run(self, encoder: torch.nn.Module, task: Any) -> dict[str, float]:
        train, test = task_features(encoder, task, batch_size=self.feature_batch_size,
                                    show_progress=self.progress, features=self.features)
        settings = [(lr, wd) for lr in self.lrs for wd in self.wds]
        metrics: dict[str, float] = {}
        best = 0
        if len(settings) > 1:  # a single setting needs no validation split
            fit_idx, val_idx = split_train_val(len(train.y), self.val_fraction, self.seed)
            sweep = self._fit(train.x[fit_idx], train.y[fit_idx], task.num_classes, settings)
            val_scores = [top1(s, train.y[val_idx]) for s in sweep.logits(train.x[val_idx])]
            best = max(range(len(settings)), key=lambda i: (val_scores[i], -i))  # ties: first
            metrics["linear_probe_val_top1"] = val_scores[best]
        final = self._fit(train.x, train.y, task.num_classes, [settings[best]])
        lr, wd = settings[best]
        return {"linear_probe_top1": top1(final.logits(test.x)[0], test.y), **metrics,
                "linear_probe_lr": lr, "linear_probe_wd": wd}


@vitssl.hookimpl
def register_evaluators(register):
    register("linear-probe", LinearProbe)
