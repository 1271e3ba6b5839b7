"""One optimiser step of a :class:`~vitssl.train.build.Run`: :func:`train_step`."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from vitssl.seeds import sample_seeds
from vitssl.train import fsdp
from vitssl.train.build import Run, wrap_model
from vitssl.train.step_metrics import as_metrics


def train_step(run: Run, step: int) -> None:
    """Optimiser step ``step`` (from 0): micro-batches, the non-finite check, clip, hooks, update.

    Losses and metrics stay on the device (``run.metrics``); at logging and
    checkpoint steps they are read before the update is applied.
    """
    t0 = time.perf_counter()
    tc, objective, optimizer = run.cfg.train, run.objective, run.optimizer
    optimizer.zero_grad(set_to_none=True)
    loss_sum: torch.Tensor | float = 0.0
    metric_sums: dict[str, Any] = {}
    for i in range(tc.accum_steps):
        loss, metrics = _micro_step(run, step, i)
        loss_sum = loss_sum + loss
        for k, v in metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + v
    done = step + 1
    run.metrics.add(done, loss_sum / tc.accum_steps,
                    {k: v / tc.accum_steps for k, v in metric_sums.items()})
    if run.metrics.due(done):
        run.metrics.check(run.checkpoint)  # the one host sync between logging steps
    unused = [] if run.settled else [p for p in run.params if p.grad is None]
    run.scaler.unscale_(optimizer)
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.params, tc.grad_clip)
    objective.before_optimizer_step(step, tc.steps)
    lr = optimizer.param_groups[0]["lr"]
    run.scaler.step(optimizer)
    run.scaler.update()
    run.scheduler.step()
    objective.after_optimizer_step(step, tc.steps)
    if not run.settled:
        _freeze(run, unused)
    dt = time.perf_counter() - t0
    run.metrics.pending[-1].update(lr=lr, dt=dt)
    run.images_seen += tc.batch_size
    run.train_time += dt


def _micro_step(run: Run, step: int, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Forward and backward of micro-batch ``i``; gradients sync on the last one only."""
    tc, ctx, device = run.cfg.train, run.ctx, run.ctx.device
    data_step = step * tc.accum_steps + i
    with torch.random.fork_rng(devices=[]):  # data RNG stays apart
        batch = to_device(next(run.data), device)
    first = (data_step * ctx.world_size + ctx.rank) * run.micro_batch
    batch["sample_seed"] = sample_seeds(tc.seed, first, run.micro_batch).to(device)
    batch["step"], batch["total_steps"] = step, tc.steps
    last = i == tc.accum_steps - 1
    fsdp.set_micro_step(run.model, last)
    ddp = isinstance(run.model, DistributedDataParallel)
    with run.model.no_sync() if ddp and not last else contextlib.nullcontext():
        dtype = run.autocast_dtype
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = run.model(batch)
        loss = out["loss"]
        run.scaler.scale(loss / tc.accum_steps).backward()
    return loss.detach().double(), as_metrics(out)


def _freeze(run: Run, unused: list[torch.nn.Parameter]) -> None:
    """Freeze what the first step's backward left without a gradient; DDP stops looking.

    An objective may hold parameters it never uses (a post-pooling norm of an
    objective that never pools); DDP would wait for their gradients forever.
    FSDP reduces only the gradients that exist, and keeps its parameters.
    """
    run.settled = True
    if run.sharded:
        return
    for param in unused:
        param.requires_grad_(False)
    run.params = [p for p in run.params if p.requires_grad]
    if isinstance(run.model, DistributedDataParallel):
        run.model = wrap_model(run.objective, run.ctx, find_unused=False)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch dict on ``device``; from pinned memory on CUDA."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)
