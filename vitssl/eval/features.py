"""Frozen-encoder features: batched, no-grad extraction with an in-memory cache.

The cache is keyed by the encoder object and the dataset object and remembers
a fingerprint of the encoder's parameters (storage and in-place version
counters), so features are recomputed after any optimiser step or weight load
but reused across evaluators and sweeps on the same frozen encoder.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitssl.errors import VitsslError
from vitssl.eval.progress import progress


@dataclass
class Features:
    """Pooled features (N, D) float32 on the CPU and their labels (N,) long."""

    x: torch.Tensor
    y: torch.Tensor


def module_device(module: nn.Module) -> torch.device:
    """Where the module's parameters live (CPU for a parameter-free module)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _fingerprint(encoder: nn.Module) -> tuple:
    tensors = list(encoder.parameters()) + list(encoder.buffers())
    return tuple((t.data_ptr(), t._version, t.device.type) for t in tensors)


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: Dataset, *, batch_size: int = 256,
                     device: torch.device | str | None = None, desc: str = "features",
                     show_progress: bool = True) -> Features:
    """``encoder(images)`` over the whole dataset in eval mode, without gradients."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VitsslError(f"the feature batch size must be a positive integer, got "
                          f"{batch_size!r}")
    device = torch.device(device) if device is not None else module_device(encoder)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = encoder.training
    encoder.eval()
    xs, ys = [], []
    try:
        for images, labels in progress(loader, len(loader), desc, show_progress):
            out = encoder(images.to(device, non_blocking=True))
            xs.append(out.float().flatten(1).cpu())
            ys.append(torch.as_tensor(labels, dtype=torch.long))
    finally:
        encoder.train(was_training)
    return Features(torch.cat(xs), torch.cat(ys))


@dataclass
class _Entry:
    dataset: Dataset
    fingerprint: tuple
    features: Features


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[int, _Entry]] = weakref.WeakKeyDictionary()


def cached_features(encoder: nn.Module, dataset: Dataset, *, batch_size: int = 256,
                    desc: str = "features", show_progress: bool = True) -> Features:
    """Like :func:`extract_features`, reusing the last result for this encoder and dataset."""
    per_encoder = _CACHE.setdefault(encoder, {})
    fingerprint = _fingerprint(encoder)
    entry = per_encoder.get(id(dataset))
    if entry is not None and entry.dataset is dataset and entry.fingerprint == fingerprint:
        return entry.features
    features = extract_features(encoder, dataset, batch_size=batch_size, desc=desc,
                                show_progress=show_progress)
    per_encoder[id(dataset)] = _Entry(dataset, fingerprint, features)
    return features


def task_features(encoder: nn.Module, task: Any, *, batch_size: int = 256,
                  show_progress: bool = True) -> tuple[Features, Features]:
    """Cached (train, test) features of a task's two splits."""
    return tuple(cached_features(encoder, split, batch_size=batch_size,
                                 desc=f"{task.name} {name} features", show_progress=show_progress)
                 for name, split in (("train", task.train), ("test", task.test)))


def clear_cache() -> None:
    """Forget every cached feature set."""
    _CACHE.clear()
