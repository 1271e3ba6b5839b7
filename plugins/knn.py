"""``knn``: weighted k-nearest-neighbour classification on frozen features.

Features are L2-normalised; each test example votes over its k most similar
training examples (cosine similarity s) with weight exp(s / T), the protocol
of Wu et al. (2018) used by DINO. Reported: top-1 (percent) per k, as
``knn_k{k}_top1``. A k larger than the training set is capped at its size and
the metric is named by the k actually used (k = 200 on 150 training examples
reports ``knn_k150_top1``), with a line on stderr saying so.

``features``: which feature of each image is used (:mod:`vitssl.eval.features`);
``max_train`` / ``max_test``: seeded random subsets of the splits (the run monitor's probe).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

import vitssl
from vitssl.data.tasks import capped
from vitssl.errors import VitsslError
from vitssl.eval.features import numbers, parse_features, task_features
from vitssl.eval.metrics import top1


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                num_classes: int, ks: Sequence[int], temperature: float,
                chunk: int = 1024) -> dict[int, torch.Tensor]:
    """Predicted classes (M,) of the test features for each k, by similarity-weighted votes."""
    train = F.normalize(train_x.float(), dim=1)
    k_max = min(max(ks), len(train))
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test_x), chunk):
        query = F.normalize(test_x[start:start + chunk].float(), dim=1)
        sims, idx = (query @ train.T).topk(k_max, dim=1)  # (b, k_max), most similar first
        weights = (sims / temperature).exp()
        neighbours = train_y[idx]
        for k in ks:
            kk = min(k, k_max)
            votes = torch.zeros(len(query), num_classes)
            votes.scatter_add_(1, neighbours[:, :kk], weights[:, :kk])
            preds[k].append(votes.argmax(dim=1))
    return {k: torch.cat(p) for k, p in preds.items()}


class KNN:
    """Weighted k-NN on L2-normalised frozen features; k = 20 and 200, temperature 0.07."""

    def __init__(self, k: Sequence[int] | int = (20, 200), temperature: float = 0.07,
                 batch_size: int = 256, progress: bool = True, features: str = "pooled",
                 max_train: int | None = None, max_test: int | None = None) -> None:
        self.features = parse_features(features)
        if not float(temperature) > 0:
            raise VitsslError(f"knn option 'temperature' must be > 0, got {temperature!r}")
        self.ks = tuple(sorted(set(numbers(k, "knn option 'k'"))))
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)
        self.progress = bool(progress)
        self.max_train, self.max_test = max_train, max_test  # seeded subsets (None: all)

    def run(self, encoder: torch.nn.Module, task: Any) -> dict[str, float]:
        task = capped(task, self.max_train, self.max_test)
        train, test = task_features(encoder, task, batch_size=self.batch_size,
                                    show_progress=self.progress, features=self.features)
        preds = knn_predict(train.x, train.y, test.x, task.num_classes, self.ks,
                            self.temperature)
        used = {k: min(k, len(train.y)) for k in self.ks}
        over = [k for k in self.ks if used[k] != k]
        if over:
            print(f"knn: k={', '.join(map(str, over))} exceeds the {len(train.y)} training "
                  f"examples of {task.name}; used k={len(train.y)}", file=sys.stderr)
        return {f"knn_k{used[k]}_top1": top1(preds[k], test.y) for k in self.ks}


@vitssl.hookimpl
def register_evaluators(register):
    register("knn", KNN)
