"""Activation checkpointing: recompute every transformer block's activations in backward.

Each ``Block`` of the objective (the encoder's, a teacher's, a decoder's) runs
under non-reentrant ``torch.utils.checkpoint``: its forward keeps only its
input, and backward recomputes the rest, with the same RNG state, so gradients
are those of the plain model. State-dict keys are unchanged (the forward is
replaced on the instance, not wrapped in another module), so checkpoints stay
interchangeable. Works in one process, under DDP and under FSDP (applied
before ``fully_shard``, so the recomputation runs inside FSDP's gather).
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from vitssl.models.layers import Block


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """Every transformer block inside ``module``, in registration order."""
    return [m for m in module.modules() if isinstance(m, Block)]


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return checkpoint(type(self).forward, self, *args, use_reentrant=False, **kwargs)


def enable_activation_checkpointing(module: nn.Module) -> int:
    """Checkpoint every block of ``module``; return how many were checkpointed."""
    blocks = transformer_blocks(module)
    for block in blocks:
        # A bound method: a deep copy of the block rebinds it to the copy.
        block.forward = types.MethodType(_checkpointed_forward, block)
    return len(blocks)


def disable_activation_checkpointing(module: nn.Module) -> None:
    """Undo :func:`enable_activation_checkpointing` (e.g. before evaluating)."""
    for block in transformer_blocks(module):
        block.__dict__.pop("forward", None)
