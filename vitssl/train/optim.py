"""AdamW with weight decay on weight matrices only (paper Table 3: Adam, β 0.9 / 0.999)."""

from __future__ import annotations

import torch
from torch import nn

from vitssl.errors import VitsslError

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def decays(name: str, param: torch.Tensor) -> bool:
    """Weights decay; biases, norm scales and pos/cls/mask embeddings do not."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim > 1 and leaf not in NO_DECAY_NAMES


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights, and everything else with weight_decay 0."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, *, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    if lr <= 0:
        raise VitsslError(f"train.lr must be positive, got {lr}")
    if weight_decay < 0:
        raise VitsslError(f"train.weight_decay must be >= 0, got {weight_decay}")
    return torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=tuple(betas))
