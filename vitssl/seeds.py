"""Every seed a run derives from ``train.seed``, in one place.

A resumed run and a run on another number of ranks must draw the same
numbers, so each seed is a pure function of the run's seed and a position:
a sample's place in the run's sample stream, a data step, a rank.
"""

from __future__ import annotations

import torch


def sample_seeds(seed: int, first: int, count: int) -> torch.Tensor:
    """Seeds of samples ``first .. first + count - 1`` of the run's sample stream."""
    base = (seed + 1) * 2 ** 40
    return torch.arange(base + first, base + first + count, dtype=torch.long)


def process_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of a rank's global generator at ``step`` (dropout, drop-path, objectives):
    at the start, and on resume when the checkpoint's RNG states are of another world size."""
    return seed * 7_919 + 17 + rank + (1_000_003 * step if step else 0)


def batch_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the augmentation drawn for data step ``step`` on ``rank``."""
    return (seed * 7_919 + step) * 101 + rank
