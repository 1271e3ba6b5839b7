"""One optimiser step of a :class:`~vitssl.train.build.Run` in two halves, :func:`backward`
and :func:`update`; between those of a run's first step the loop calls :func:`freeze_unused`."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from vitssl.seeds import sample_seeds
from vitssl.train import fsdp
from vitssl.train.build import Run, ddp
from vitssl.train.checks import PRECISIONS
from vitssl.train.step_metrics import as_metrics


def backward(run: Run, step: int) -> None:
    """Forward and backward of step ``step`` (from 0): every micro-batch, losses kept on device."""
    tc = run.cfg.train
    run.optimizer.zero_grad(set_to_none=True)
    outs = [_micro_step(run, step, i) for i in range(tc.accum_steps)]
    loss = sum(loss for loss, _ in outs) / tc.accum_steps
    metrics = {k: sum(m[k] for _, m in outs) / tc.accum_steps for k in outs[-1][1]}
    run.metrics.add(step + 1, loss, metrics, lr=run.optimizer.param_groups[0]["lr"])


def update(run: Run, step: int) -> None:
    """Read the pending metrics when the cadence says so (before the update is applied, so a
    non-finite step is never applied), then clip, call the hooks and step the optimiser."""
    tc, objective, optimizer = run.cfg.train, run.objective, run.optimizer
    if run.cadence.reads(step + 1):
        run.metrics.check(run.checkpoint)  # the one host sync between logging steps
    run.scaler.unscale_(optimizer)
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.params, tc.grad_clip)
    objective.before_optimizer_step(step, tc.steps)
    run.scaler.step(optimizer)
    run.scaler.update()
    run.scheduler.step()
    objective.after_optimizer_step(step, tc.steps)


def _micro_step(run: Run, step: int, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Forward and backward of micro-batch ``i``; gradients sync on the last one only."""
    tc, ctx = run.cfg.train, run.ctx
    with torch.random.fork_rng(devices=[]):  # data RNG stays apart
        batch = next(run.data)
    run.objective.check_batch(batch)  # on the host, before the batch moves
    batch = to_device(batch, ctx.device)
    micro = tc.batch_size // (ctx.world_size * tc.accum_steps)
    first = ((step * tc.accum_steps + i) * ctx.world_size + ctx.rank) * micro
    # sample_seed stays on the host: objectives draw from it without waiting for the device
    batch.update(sample_seed=sample_seeds(tc.seed, first, micro), step=step,
                 total_steps=tc.steps)
    last = i == tc.accum_steps - 1
    fsdp.set_micro_step(run.objective, last)
    ddp_model = isinstance(run.model, DistributedDataParallel)
    with run.model.no_sync() if ddp_model and not last else contextlib.nullcontext():
        dtype = PRECISIONS[tc.precision]
        with torch.autocast(ctx.device.type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            out = run.model(batch)
        loss = out["loss"]
        run.scaler.scale(loss / tc.accum_steps).backward()
    return loss.detach().double(), as_metrics(out)


def freeze_unused(run: Run) -> None:
    """Freeze what a backward left without a gradient (an objective that never pools leaves
    its post-pooling norm unused), so DDP stops waiting for them; FSDP keeps its parameters.
    Called after the first step's backward, before the hooks may drop gradients on purpose."""
    if run.sharded:
        return
    for param in run.params:
        if param.grad is None:
            param.requires_grad_(False)
    if isinstance(run.model, DistributedDataParallel) and run.model.find_unused_parameters:
        run.model = ddp(run.model.module, run.ctx, find_unused=False)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch dict on ``device``; from pinned memory on CUDA."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)
