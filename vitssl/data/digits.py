"""``builtin:digits``: scikit-learn's handwritten digits, as small RGB images.

1,797 real 8×8 grey-level scans of the digits 0-9 (the UCI "Optical
Recognition of Handwritten Digits" test set, CC BY 4.0) shipped inside
scikit-learn. Images are 8×8 grey values in [0, 16], returned as 3-channel
uint8 tensors (the loader resizes them). Fixed split: a seed-0 permutation,
the first 1,297 for ``train`` and the last 500 for ``test``. 10 classes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from vitssl.data.source import NONE
from vitssl.errors import VitsslError

TEST_SIZE = 500


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    return images[order], bunch.target[order].astype(np.int64)


class Digits(Dataset):
    """Handwritten digits (scikit-learn/UCI, CC BY 4.0): 10 classes, 8×8, 1,297/500 split."""

    num_classes = 10
    # None: a mirrored 2 reads as a 5, a cropped 8 as a 0, a one-pixel shift is an eighth
    # of the digit; no colour operations either (benchmarks/RESULTS.md).
    augmentation = NONE

    def __init__(self, split: str = "train") -> None:
        images, labels = _load()
        if split == "train":
            sl = slice(0, len(images) - TEST_SIZE)
        elif split == "test":
            sl = slice(len(images) - TEST_SIZE, None)
        else:
            raise VitsslError(f"builtin:digits has no split '{split}'; accepted: train, test")
        self.images, self.labels, self.split = images[sl], labels[sl], split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index]).unsqueeze(0).expand(3, -1, -1)
        return image.contiguous(), int(self.labels[index])
