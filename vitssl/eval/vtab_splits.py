"""The four splits of the VTAB-1k protocol for any labelled spec.

``vtab1k:PATH/TASK`` folders and the embedded dSprites tasks ship ``train800`` / ``val200`` /
``train800val200`` / ``test``. A dataset with only ``train`` / ``test`` gets them carved from
``train`` by one seeded permutation: its first 800 examples, the next 200 and both (under
1,000 examples: 80% and the rest); ``test`` is the dataset's own, whole.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset, Subset

from vitssl.config import IMAGENET_MEAN, IMAGENET_STD
from vitssl.data.source import DataSpec, open_dataset, parse_spec
from vitssl.data.tasks import Task, Transformed, load_task
from vitssl.errors import VitsslError

TRAIN, VAL = 800, 200


@dataclass
class VtabTask:
    """A task with the protocol's splits; ``train`` (= ``train800val200``) and ``test`` as any
    evaluator expects."""

    name: str
    train800: Dataset
    val200: Dataset
    train: Dataset
    test: Dataset
    num_classes: int

    def selection_task(self) -> Task:
        """Train on train800, score on val200."""
        return Task(f"{self.name} train800->val200", self.train800, self.val200, self.num_classes)

    def final_task(self) -> Task:
        """Train on train800val200, score on test."""
        return Task(f"{self.name} train800val200->test", self.train, self.test,
                    self.num_classes)


def carve_indices(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train800, val200) indices of a dataset of ``n`` examples: a seeded permutation."""
    if n < 2:
        raise VitsslError(f"cannot carve train800/val200 from {n} training example(s)")
    train = TRAIN if n >= TRAIN + VAL else max(1, (4 * n) // 5)
    val = VAL if n >= TRAIN + VAL else n - train
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:train]), np.sort(perm[train:train + val])


def load_vtab_task(spec: str, image_size: int, *, mean: tuple[float, ...] = IMAGENET_MEAN,
                   std: tuple[float, ...] = IMAGENET_STD, seed: int = 0) -> VtabTask:
    """The protocol's four splits of a labelled spec, with evaluation transforms applied."""
    parsed = parse_spec(spec)
    if parsed.split:
        raise VitsslError(f"'{spec}': give the task without a split; the VTAB protocol "
                          f"uses train800, val200, train800val200 and test")
    train = "train800val200" if parsed.source.native_splits(parsed.target) else "train"
    return as_vtab_task(load_task(spec, image_size, mean=mean, std=std, train_split=train), seed)


def as_vtab_task(task, seed: int = 0) -> VtabTask:  # noqa: ANN001 - any evaluator task
    """The protocol splits of whatever task an evaluator was handed: a :class:`VtabTask` as
    is; a transformed task of a spec with native splits reopened split by split with the same
    transform (the real train800 / val200 lists); anything else carved from ``task.train``."""
    if isinstance(task, VtabTask):
        return task
    try:
        spec = parse_spec(str(task.name))
    except VitsslError:
        spec = None
    if spec is not None and isinstance(task.train, Transformed) \
            and spec.source.native_splits(spec.target):
        base = DataSpec(spec.kind, spec.target)

        def like(split: str) -> Transformed:
            view = copy.copy(task.train)
            view.dataset = open_dataset(base, split)
            return view

        return VtabTask(task.name, like("train800"), like("val200"), like("train800val200"),
                        task.test, task.num_classes)
    tr, va = carve_indices(len(task.train), seed)
    both = np.sort(np.concatenate([tr, va]))
    return VtabTask(str(task.name), Subset(task.train, tr.tolist()),
                    Subset(task.train, va.tolist()), Subset(task.train, both.tolist()),
                    task.test, task.num_classes)
