"""Per-rank bytes of parameters, gradients and optimizer state, measured and by rule.

Measured: the elements this rank's tensors hold (a DTensor's local shard),
times their element size; padding FSDP adds to uneven shards (at most
``world_size - 1`` rows per parameter) is not counted. The rule: DDP holds
every tensor whole; FSDP splits each parameter's dim 0 into ``world_size``
chunks of ``ceil(rows / world_size)`` rows, rank ``r`` holding chunk ``r``,
and its gradient and AdamW moments follow the parameter's shard.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

KINDS = ("params", "grads", "optimizer")


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def measured_bytes(module: nn.Module, optimizer: torch.optim.Optimizer | None = None
                   ) -> dict[str, int]:
    """This rank's bytes of parameters, gradients and optimizer state tensors."""
    params = [p for p in module.parameters()]
    state = optimizer.state.values() if optimizer is not None else []
    return {
        "params": sum(_local_bytes(p) for p in params),
        "grads": sum(_local_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(_local_bytes(v) for entry in state for v in entry.values()
                         if isinstance(v, torch.Tensor) and v.ndim > 0),
    }


def shard_rows(rows: int, world_size: int, rank: int) -> int:
    """Rows of a ``rows``-row parameter that FSDP's dim-0 sharding gives ``rank``."""
    chunk = math.ceil(rows / world_size)
    return max(0, min(rows, (rank + 1) * chunk) - rank * chunk)


def rule_bytes(shapes: Iterable[tuple[tuple[int, ...], bool]], strategy: str, world_size: int,
               rank: int = 0, bytes_per_element: int = 4, moments: int = 2) -> dict[str, int]:
    """Bytes rank ``rank`` holds by the sharding rule.

    ``shapes``: (parameter shape, trained) pairs; frozen parameters have no
    gradient or optimizer state. ``moments``: AdamW keeps two per parameter.
    """
    out = dict.fromkeys(KINDS, 0)
    for shape, trained in shapes:
        rows, rest = (shape[0], math.prod(shape[1:])) if shape else (1, 1)
        if strategy == "fsdp":
            rows = shard_rows(rows, world_size, rank)
        elif strategy != "ddp":
            raise ValueError(f"unknown strategy {strategy!r}")
        size = rows * rest * bytes_per_element
        out["params"] += size
        if trained:
            out["grads"] += size
            out["optimizer"] += moments * size
    return out


def parameter_shapes(module: nn.Module) -> list[tuple[tuple[int, ...], bool]]:
    """(global shape, requires_grad) of every parameter of an unsharded or sharded module."""
    return [(tuple(p.shape), p.requires_grad) for p in module.parameters()]
