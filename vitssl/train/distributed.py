"""Process groups under ``torchrun``: NCCL on GPU, gloo on CPU; one process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from vitssl.devices import fit_cpu_threads, local_ranks, resolve_device, usable_cores

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """Where this process trains and which share of the global batch it owns."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # setup() created the process group, teardown() ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Context:
    """Join the process group ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank)
    if where.type == "cpu":
        fit_cpu_threads(usable_cores(), local_ranks(world))
    owns = False
    if world > 1 and not dist.is_initialized():
        if where.type == "cuda":
            torch.cuda.set_device(where)
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
        owns = True
    return Context(rank, world, where, owns)


def teardown(ctx: Context) -> None:
    """End the process group if :func:`setup` started it (a caller's own group stays)."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The mean of a tensor over ranks (a no-op in one process)."""
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


def all_ranks(value: object, ctx: Context) -> list:
    """Every rank's ``value`` (picklable; CPU tensors stay on the CPU), in rank order."""
    if not ctx.distributed:
        return [value]
    ranks = [None] * ctx.world_size
    dist.all_gather_object(ranks, value)
    return ranks


def broadcast(value: T, ctx: Context) -> T:
    """Rank 0's ``value`` (picklable) on every rank, e.g. a run directory's name."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()
