"""``few-shot``: closed-form few-shot linear evaluation (ViT paper §4.1, big_vision fewshot_lsr).

For each seed, one permutation of the training set orders every class's examples; the
``s``-shot set takes the first ``s`` of each class (nested across shot counts). A ridge
classifier (λ = 2¹⁰ on standardised features plus a bias feature of 100, targets in {-1, 1}^K)
is solved in closed form and scored on the whole test split. Reported: top-1 (percent) per shot
count, averaged over seeds, as ``fewshot_{s}shot_top1``; with ``l2_sweep``, also
``fewshot_{s}shot_top1_l2_{λ}`` for every swept λ.

A class with fewer training examples than a shot count uses what it has; one with none keeps
its target column and is never predicted (big_vision's behaviour, which VTAB-1k's train800 of
sun397 or caltech101 needs). Such shot counts also report ``fewshot_{s}shot_short_classes``
(how many classes had fewer than ``s``) and say so on stderr.

``features``: which feature of each image is used (:mod:`vitssl.eval.features`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import vitssl
from vitssl.errors import VitsslError
from vitssl.eval.features import numbers, parse_features, task_features
from vitssl.eval.metrics import top1
from vitssl.eval.ridge import DEFAULT_L2, FewShotRidge


def class_orders(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """For each class, its example indices in the order of one seeded permutation."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [perm[labels[perm] == c] for c in range(num_classes)]


def fewshot_indices(orders: list[np.ndarray], shots: int) -> np.ndarray:
    """The first ``shots`` examples of every class, or all it has (nested: k-shot ⊂ (k+m)-shot)."""
    return np.concatenate([order[:shots] for order in orders])


class FewShot:
    """Closed-form ridge on frozen features; shots (1, 5, 10, 25), 3 seeds."""

    def __init__(self, shots: Sequence[int] | int = (1, 5, 10, 25), seeds: int = 3,
                 l2_reg: float = DEFAULT_L2, l2_sweep: Sequence[float] | None = None,
                 batch_size: int = 256, progress: bool = True, features: str = "pooled") -> None:
        self.features = parse_features(features)
        self.shots = tuple(sorted(set(numbers(shots, "few-shot option 'shots'"))))
        self.seeds = numbers(seeds, "few-shot option 'seeds'")[0]
        self.l2_reg = float(l2_reg)
        self.l2_sweep = tuple(float(v) for v in (l2_sweep or ()))
        if self.l2_reg <= 0 or any(v <= 0 for v in self.l2_sweep):
            raise VitsslError("few-shot options 'l2_reg' and 'l2_sweep' need positive values")
        self.batch_size = int(batch_size)
        self.progress = bool(progress)

    def run(self, encoder: torch.nn.Module, task: Any) -> dict[str, float]:
        train, test = task_features(encoder, task, batch_size=self.batch_size,
                                    show_progress=self.progress, features=self.features)
        labels = train.y.numpy()
        if len(labels) == 0:
            raise VitsslError(f"few-shot: task {task.name} has no training examples")
        counts = np.bincount(labels, minlength=task.num_classes)
        short = {s: int((counts < s).sum()) for s in self.shots}
        if any(short.values()):
            empty = int((counts == 0).sum())
            per_shot = ", ".join(f"{s}-shot {n}" for s, n in short.items() if n)
            print(f"few-shot: {task.name}: classes with fewer examples than the shots (they "
                  f"use what they have): {per_shot}; {empty} class(es) have none",
                  file=sys.stderr)
        l2s = (self.l2_reg,) + tuple(v for v in self.l2_sweep if v != self.l2_reg)
        scores: dict[tuple[int, float], list[float]] = {}
        for seed in range(self.seeds):
            orders = class_orders(labels, task.num_classes, seed)
            for s in self.shots:
                idx = torch.from_numpy(fewshot_indices(orders, s))
                model = FewShotRidge.fit(train.x[idx], train.y[idx], task.num_classes)
                for l2 in l2s:
                    scores.setdefault((s, l2), []).append(top1(model.predict(test.x, l2), test.y))
        mean = {key: float(np.mean(values)) for key, values in scores.items()}
        return {**{f"fewshot_{s}shot_top1": mean[(s, self.l2_reg)] for s in self.shots},
                **{f"fewshot_{s}shot_top1_l2_{l2:g}": mean[(s, l2)]
                   for s in self.shots for l2 in self.l2_sweep},
                **{f"fewshot_{s}shot_short_classes": float(n) for s, n in short.items() if n}}


@vitssl.hookimpl
def register_evaluators(register):
    register("few-shot", FewShot)
