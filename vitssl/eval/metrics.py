"""Classification metrics, reported in percent."""

from __future__ import annotations

import torch


def top1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of class predictions (N,) or scores (N, K) against labels (N,)."""
    if predictions.ndim == 2:
        predictions = predictions.argmax(dim=1)
    if labels.numel() == 0:
        return float("nan")
    return 100.0 * (predictions.cpu() == labels.cpu()).double().mean().item()
