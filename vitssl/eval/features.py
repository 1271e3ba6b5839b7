"""Frozen-encoder features: batched, no-grad extraction with an in-memory cache.

The evaluators' ``features=`` names what is read of each image: ``pooled`` (``encoder(images)``,
the default), ``cls`` (the class token of ``forward_features``), ``mean`` (of its patch tokens),
``cls+mean`` (both, concatenated), ``blocks:K`` (the last K blocks' outputs after the final
norm, patch tokens mean-pooled, concatenated oldest first) or ``pre-logits`` (a supervised
checkpoint's ``encoder.pre_logits`` on the pooled output).

The cache is keyed by encoder, dataset and choice and checks the encoder's tensors (storage
and in-place version counters): features are recomputed after any optimiser step or load.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitssl.errors import VitsslError
from vitssl.eval.progress import progress


def numbers(value: Any, option: str, kind: type = int) -> tuple:
    """One value or a list as a non-empty tuple of ints >= 1 (or ``kind=float``: floats >= 0)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out or min(out) < (1 if kind is int else 0):
        wanted = "positive integers" if kind is int else "non-negative numbers"
        raise VitsslError(f"{option} needs {wanted}, got {value!r}")
    return out


def parse_features(value: Any) -> str:
    """A ``features=`` value checked and normalised (``"blocks:4"``); one-line error if bad."""
    text = str(value).strip()
    if text in ("pooled", "cls", "mean", "cls+mean", "pre-logits"):
        return text
    head, colon, count = text.partition(":")
    if head == "blocks" and colon and count.strip().isdigit() and int(count) >= 1:
        return f"blocks:{int(count)}"
    raise VitsslError(f"unknown features '{value}'; accepted: pooled, cls, mean, cls+mean, "
                      f"blocks:K (K >= 1: the last K blocks, mean-pooled, concatenated), "
                      f"pre-logits")


def _needs(encoder: nn.Module, method: str, features: str) -> None:
    if not callable(getattr(encoder, method, None)):
        raise VitsslError(f"features='{features}' needs an encoder with {method}(); "
                          f"{type(encoder).__name__} has none (use features=pooled)")


def check_features(encoder: nn.Module, features: str) -> str:
    """``features`` normalised, refused when this encoder cannot provide it."""
    features = parse_features(features)
    if features in ("cls", "mean", "cls+mean"):
        _needs(encoder, "forward_features", features)
    if features in ("cls", "cls+mean") and getattr(encoder, "num_prefix_tokens", 0) < 1:
        raise VitsslError(f"features='{features}': this encoder has no class token "
                          f"(class_token=false); use mean or pooled")
    if features.startswith("blocks:"):
        _needs(encoder, "forward_intermediates", features)
        depth = len(getattr(encoder, "blocks", ()))
        if int(features.split(":")[1]) > depth:
            raise VitsslError(f"features='{features}': the encoder has {depth} blocks; "
                              f"accepted: blocks:1 .. blocks:{depth}")
    if features == "pre-logits" and not isinstance(getattr(encoder, "pre_logits", None),
                                                    nn.Module):
        raise VitsslError("features='pre-logits': this checkpoint has no pre-logits (only a "
                          "supervised objective's checkpoint has them); use pooled, cls, mean, "
                          "cls+mean or blocks:K")
    return features


def encode_images(encoder: nn.Module, images: torch.Tensor,
                  features: str = "pooled") -> torch.Tensor:
    """One batch of images (B, C, H, W) -> features (B, F) as named by ``features``."""
    if features == "pooled":
        return encoder(images)
    if features == "pre-logits":
        return encoder.pre_logits(encoder(images))
    prefix = int(getattr(encoder, "num_prefix_tokens", 0))
    if features.startswith("blocks:"):
        outputs = encoder.forward_intermediates(images, int(features.split(":")[1]), norm=True,
                                                intermediates_only=True)
        return torch.cat([out[:, prefix:].mean(dim=1) for out in outputs], dim=-1)
    tokens = encoder.forward_features(images)  # (B, T, D)
    cls, mean = tokens[:, 0], tokens[:, prefix:].mean(dim=1)
    if features == "cls+mean":
        return torch.cat([cls, mean], dim=-1)
    return cls if features == "cls" else mean  # the names left after check_features


class Features(NamedTuple):
    """Features (N, F) float32 on the CPU and their labels (N,) long."""

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
                     desc: str = "features", show_progress: bool = True,
                     features: str = "pooled") -> Features:
    """The chosen ``features`` of the whole dataset in eval mode, without gradients."""
    features = check_features(encoder, features)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VitsslError(f"the feature batch size must be a positive integer, got "
                          f"{batch_size!r}")
    device = module_device(encoder)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = encoder.training
    encoder.eval()
    xs, ys = [], []
    try:
        for images, labels in progress(loader, len(loader), desc, show_progress):
            out = encode_images(encoder, images.to(device, non_blocking=True), features)
            xs.append(out.float().flatten(1).cpu())
            ys.append(torch.as_tensor(labels, dtype=torch.long))
    finally:
        encoder.train(was_training)
    return Features(torch.cat(xs), torch.cat(ys))


# encoder -> {(id(dataset), features): (dataset, fingerprint, Features)}
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def cached_features(encoder: nn.Module, dataset: Dataset, *, batch_size: int = 256,
                    desc: str = "features", show_progress: bool = True,
                    features: str = "pooled") -> Features:
    """:func:`extract_features`, reusing the last result for this encoder, dataset and choice."""
    features = check_features(encoder, features)
    per_encoder, fingerprint = _CACHE.setdefault(encoder, {}), _fingerprint(encoder)
    entry = per_encoder.get((id(dataset), features))
    if entry is not None and entry[0] is dataset and entry[1] == fingerprint:
        return entry[2]
    out = extract_features(encoder, dataset, batch_size=batch_size, desc=desc,
                           show_progress=show_progress, features=features)
    per_encoder[(id(dataset), features)] = (dataset, fingerprint, out)
    return out


def task_features(encoder: nn.Module, task: Any, *, batch_size: int = 256,
                  show_progress: bool = True,
                  features: str = "pooled") -> tuple[Features, Features]:
    """Cached (train, test) ``features`` of a task's two splits."""
    label = "" if features == "pooled" else f" {features}"
    return tuple(cached_features(encoder, split, batch_size=batch_size, features=features,
                                 desc=f"{task.name} {name}{label} features",
                                 show_progress=show_progress)
                 for name, split in (("train", task.train), ("test", task.test)))
