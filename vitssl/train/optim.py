"""AdamW with weight decay on weight matrices only (paper Table 3), fused where torch allows."""

from __future__ import annotations

import torch
from torch import nn

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


class AdamW(torch.optim.AdamW):
    """torch's AdamW whose fused steps also bump the updated parameters' version counters, as
    the per-parameter loop's in-place updates do (the evaluation feature cache keys on them)."""

    def step(self, closure=None):  # noqa: ANN001, ANN201  (torch's signature)
        loss = super().step(closure)
        updated = [p for group in self.param_groups if group.get("fused")
                   for p in group["params"] if p.grad is not None]
        if updated:
            torch.autograd.graph.increment_version(updated)
        return loss


def build_optimizer(module: nn.Module, *, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999)) -> AdamW:
    """AdamW over :func:`param_groups`, fused when every parameter is a plain float tensor
    on CPU or CUDA (FSDP's DTensors keep the default implementation)."""
    from torch.distributed.tensor import DTensor

    groups = param_groups(module, weight_decay)
    params = [p for group in groups for p in group["params"]]
    fuse = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                and not isinstance(p, DTensor) for p in params)
    return AdamW(groups, lr=lr, betas=tuple(betas), fused=fuse or None)
