"""Labelled evaluation tasks: train and test splits ready for an encoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from vitssl.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, normalisation
from vitssl.data.source import DataSpec, open_dataset, parse_spec
from vitssl.data.transforms import eval_transform, normalize
from vitssl.errors import VitsslError


class Transformed(Dataset):
    """(image, label) -> (normalised float tensor (C, S, S), label); ``channels``: bands kept."""

    def __init__(self, dataset: Dataset, image_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], channels: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.transform = eval_transform(image_size, channels=channels)
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return normalize(self.transform(image), self.mean, self.std), int(label)


@dataclass
class Task:
    """What evaluators receive: ``train`` / ``test`` datasets of (image, label)."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int


def load_task(spec: str, image_size: int, *, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD, train_split: str = "train",
              test_split: str = "test", options: Mapping[str, Any] | None = None,
              channels: Sequence[int] | None = None) -> Task:
    """A labelled task from a spec, with evaluation transforms applied.

    ``options``: the source's ``data.options`` (e.g. ``{"root": DIR}``); ``channels``:
    the bands kept (``data.channels``).
    """
    parsed = parse_spec(spec)
    base = DataSpec(parsed.kind, parsed.target)
    train = open_dataset(base, train_split, **(options or {}))
    test = open_dataset(base, test_split, **(options or {}))
    classes = getattr(train, "num_classes", None)
    if not classes:
        raise VitsslError(f"'{spec}' has no labels; evaluators need a labelled dataset")
    return Task(name=str(base), train=Transformed(train, image_size, mean, std, channels),
                test=Transformed(test, image_size, mean, std, channels), num_classes=classes)


def run_task(spec: str, image_size: int, data: DataConfig, in_chans: int | str, *,
             options: Mapping[str, Any] | None = None) -> Task:
    """:func:`load_task` as a run's encoder sees images (its ``data.mean/std/channels``);
    a one-line error when ``spec`` gives another channel count than ``in_chans``."""
    in_chans = 3 if in_chans == "auto" else in_chans
    mean, std = normalisation(data)
    task = load_task(spec, image_size, mean=mean, std=std, options=options,
                     channels=data.channels)
    got = task.test[0][0].shape[0]
    if got != in_chans:
        raise VitsslError(f"'{spec}' gives {got}-channel images, but the encoder takes "
                          f"{in_chans}; evaluate on data like its training data")
    return task


def capped(task: Task, max_train: int | None, max_test: int | None) -> Task:
    """``task`` with its splits cut to seeded random subsets of at most the given sizes."""

    def cut(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
        if limit is None or len(dataset) <= limit:
            return dataset
        keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:limit])
        return Subset(dataset, keep.tolist())

    return Task(name=task.name, train=cut(task.train, max_train, 0),
                test=cut(task.test, max_test, 1), num_classes=task.num_classes)
