"""FSDP2 (``fully_shard``) for the objective under ``torchrun``: every transformer block
(a teacher's too, so an EMA ``lerp_`` stays shard-local) is its own unit, the objective the root.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from vitssl.models.layers import Block

STRATEGIES = ("ddp", "fsdp")


def transformer_blocks(module: nn.Module) -> list[Block]:
    """Every transformer block inside ``module``, in registration order."""
    return [m for m in module.modules() if isinstance(m, Block)]


def shard(objective: nn.Module, device: torch.device, world_size: int,
          param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard ``objective`` in place, each block then the root; return it. ``param_dtype``:
    gather parameters in that dtype for compute, reduce gradients in fp32."""
    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype,
                                  reduce_dtype=None if param_dtype is None else torch.float32)
    for block in transformer_blocks(objective):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(objective, mesh=mesh, mp_policy=policy)
    return objective


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def set_micro_step(module: nn.Module, last: bool) -> None:
    """Gradient accumulation: reduce-scatter and reshard only after the last micro-step."""
    if is_sharded(module):
        module.set_requires_gradient_sync(last)
        module.set_reshard_after_backward(last)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU in rank 0 (empty elsewhere); collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)


def sharded_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer
                            ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """(flat ``"state.<fqn>.<key>"`` -> this rank's shard, param groups) of ``optimizer``:
    keyed by parameter name, so it reloads into any sharding of the same model."""
    osd = get_optimizer_state_dict(module, optimizer)
    tensors = {f"state.{fqn}.{key}": value for fqn, entry in osd["state"].items()
               for key, value in entry.items()}
    return tensors, osd["param_groups"]


def load_sharded_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer,
                                 tensors: dict[str, torch.Tensor],
                                 param_groups: list[dict[str, Any]]) -> None:
    """Inverse of :func:`sharded_optimizer_state` (tensors already filled in place)."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        fqn, key = name[len("state."):].rsplit(".", 1)
        state.setdefault(fqn, {})[key] = value
    # strict=False: a parameter that never had a gradient has no saved state
    set_optimizer_state_dict(module, optimizer, {"state": state, "param_groups": param_groups},
                             options=StateDictOptions(strict=False))
