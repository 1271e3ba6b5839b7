"""What a checkpoint holds besides the weights: optimizer (under FSDP per rank, through DCP),
scheduler, scaler, every rank's RNG and, with ``wds:`` data, every rank's stream position."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitssl.seeds import process_seed
from vitssl.train import distributed, fsdp
from vitssl.train.checkpoint import OPTIMIZER
from vitssl.train.sharded_state import load_tensors


def gather_rng_states(ctx: distributed.Context) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state, in rank order (collective)."""
    mine = {"torch": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return distributed.all_ranks(mine, ctx)


def restore_rng(saved: Any, ctx: distributed.Context, seed: int, step: int) -> None:
    """Restore this rank's generator state from a checkpoint's ``rng`` entry."""
    if isinstance(saved, dict):  # written before per-rank states: rank 0's, for everyone
        saved = [saved] * ctx.world_size
    if len(saved) != ctx.world_size:
        torch.manual_seed(process_seed(seed, ctx.rank, step))
        if ctx.is_main:
            print(f"the checkpoint holds RNG states of {len(saved)} ranks, this run has "
                  f"{ctx.world_size}; reseeding the generators", file=sys.stderr)
        return
    state = saved[ctx.rank]
    torch.set_rng_state(state["torch"])
    if ctx.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], ctx.device)


def stream_position(batches: Any, ctx: distributed.Context) -> dict[str, Any]:
    """``{"stream": every rank's wds stream position, in rank order}`` (collective), or {}."""
    mine = batches.stream_state()
    if mine is None:
        return {}
    return {"stream": {"world_size": ctx.world_size, "ranks": distributed.all_ranks(mine, ctx)}}


def load_optimizer(ckpt: Path, state: dict[str, Any], objective: nn.Module,
                   optimizer: torch.optim.Optimizer, sharded: bool) -> None:
    """Restore the optimizer from checkpoint ``ckpt`` (whose ``state.pt`` is ``state``)."""
    if not sharded:
        optimizer.load_state_dict(state["optimizer"])
        return
    template, _ = fsdp.sharded_optimizer_state(objective, optimizer)
    load_tensors(template, ckpt / OPTIMIZER)
    fsdp.load_sharded_optimizer_state(objective, optimizer, template,
                                      state["optimizer_param_groups"])
