"""What a checkpoint holds besides the weights: optimizer, scheduler, scaler and every rank's RNG.

With ``wds:`` data it also holds every rank's stream position
(:func:`stream_position`), so a resumed run reads on from where it stopped.

Under DDP or in one process the optimizer state goes into ``state.pt`` whole.
Under FSDP each rank holds a shard of it, written with
``torch.distributed.checkpoint`` into the checkpoint's ``optimizer/``
directory (keyed by parameter name, so it reloads on another world size),
while ``state.pt`` keeps the optimizer's param groups. The weights are
gathered to rank 0 and written as the usual safetensors file.

RNG: every rank's generator state is gathered to rank 0 and saved as a list;
on resume rank ``r`` restores entry ``r``, so a resumed multi-rank run draws
what the uninterrupted one would (dropout, drop-path, any objective
randomness). On another world size the generators are reseeded (said once).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vitssl.seeds import process_seed
from vitssl.train import distributed, fsdp
from vitssl.train.checkpoint import (
    OPTIMIZER,
    prepare_staging,
    save_checkpoint,
    staging_dir,
    step_dir,
)
from vitssl.train.sharded_state import load_tensors, save_tensors

if TYPE_CHECKING:
    from vitssl.train.build import Run


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(ctx: distributed.Context) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state, in rank order (collective)."""
    mine = _rng_state(ctx.device)
    gathered = {k: distributed.all_gather(v, ctx) for k, v in mine.items()}
    return [{k: gathered[k][r] for k in mine} for r in range(ctx.world_size)]


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
    """``{"stream": every rank's wds stream position}`` (collective), or {} for other data.

    Gathered to every rank in rank order; a resumed run on the same world size
    hands rank ``r`` entry ``r`` (:func:`vitssl.data.pipeline.stream_resume`).
    """
    mine = batches.stream_state()
    if mine is None:
        return {}
    ranks = [mine]
    if ctx.distributed:
        ranks = [None] * ctx.world_size
        torch.distributed.all_gather_object(ranks, mine)
    return {"stream": {"world_size": ctx.world_size, "ranks": ranks}}


def save_run_checkpoint(run: Run, step: int, extra: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` (collective: every rank calls it); return its directory.

    With ``train.strategy=fsdp`` the optimizer state goes through DCP (any
    world size); otherwise it is saved whole by rank 0.
    """
    run_dir, objective, optimizer, cfg, ctx = (run.run_dir, run.objective, run.optimizer,
                                               run.cfg, run.ctx)
    sharded = cfg.train.strategy == "fsdp"
    rng = gather_rng_states(ctx)
    weights = fsdp.full_state_dict(objective) if fsdp.is_sharded(objective) else None
    state = {**extra, "rng": rng}
    if sharded:
        tensors, groups = fsdp.sharded_optimizer_state(objective, optimizer)
        if ctx.is_main:
            prepare_staging(run_dir, step)
        distributed.barrier(ctx)
        save_tensors(tensors, staging_dir(run_dir, step) / OPTIMIZER)
        state["optimizer_param_groups"] = groups
    else:
        state["optimizer"] = optimizer.state_dict() if ctx.is_main else None
    final = step_dir(run_dir, step)
    if ctx.is_main:
        final = save_checkpoint(run_dir, step, objective, cfg, state,
                                keep=cfg.train.keep_checkpoints, weights=weights, staged=sharded,
                                options=run.objective_options)
    distributed.barrier(ctx)
    return final


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
