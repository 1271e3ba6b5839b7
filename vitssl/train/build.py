"""Everything a run holds, built once: :class:`Run` and :func:`build_run`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.nn.parallel import DistributedDataParallel

from vitssl.config import (
    IMAGENET_MEAN,
    Config,
    flatten,
    image_hw,
    image_size_text,
    load_config,
    save_config,
    to_dict,
)
from vitssl.config_values import check_values
from vitssl.data.channels import describe_statistics, resolve_channels
from vitssl.data.pipeline import Batches, data_info, describe_workers, pretrain_batches
from vitssl.data.source import resolve_augmentation
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.objective import Objective, build_objective, objective_options
from vitssl.plugins import get_registry
from vitssl.seeds import process_seed
from vitssl.train import distributed, fsdp
from vitssl.train.checkpoint import (
    WEIGHTS,
    checkpoint_problem,
    list_checkpoints,
    readable_checkpoint,
    remove_partial,
)
from vitssl.train.checks import PRECISIONS, check_resumable, micro_batch_size
from vitssl.train.health import monitor_every, tail_held_out
from vitssl.train.monitor import Monitor, build_monitor, check_monitor
from vitssl.train.optim import build_optimizer
from vitssl.train.runlog import RunLog, read_metrics, truncate_metrics
from vitssl.train.schedule import build_scheduler
from vitssl.train.step_metrics import DeferredMetrics
from vitssl.train.summary import check_entries
from vitssl.train.train_state import load_optimizer, restore_rng
from vitssl.weights.init import Init, load_init, resume_conflict


@dataclass(frozen=True)
class Cadence:
    """Which steps (counted from 1) read and log the pending metrics, and which checkpoint."""

    log_every: int
    checkpoint_every: int
    total_steps: int
    monitor_every: int = 0  # 0: no health checks

    def saves(self, step: int) -> bool:
        return step % self.checkpoint_every == 0 or step == self.total_steps

    def reads(self, step: int) -> bool:
        checks = self.monitor_every and step % self.monitor_every == 0
        return step % max(1, self.log_every) == 0 or self.saves(step) or bool(checks)


@dataclass(kw_only=True)
class Run:
    """What a pretraining run holds between steps."""

    cfg: Config  # resolved: augmentation filled in, ``out`` set
    ctx: distributed.Context
    objective: Objective  # the plain module: state dicts, hooks, exports
    objective_options: dict[str, Any]  # what the factory was built with (data's included)
    model: nn.Module  # what the step calls: the objective, compiled and/or in DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    batches: Batches
    data: Iterator[dict[str, Any]]
    start_step: int
    cadence: Cadence
    log: RunLog
    metrics: DeferredMetrics
    checkpoint: Path | None = None  # the newest complete checkpoint
    train_time: float = 0.0
    monitor: Monitor | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out)

    @property
    def params(self) -> list[nn.Parameter]:
        """What the optimiser trains (clipped together)."""
        return [p for p in self.objective.parameters() if p.requires_grad]

    @property
    def sharded(self) -> bool:
        return fsdp.is_sharded(self.objective)


def resolve_run_config(cfg: Config) -> Config:
    """``cfg`` with its channels and normalisation from the data
    (:mod:`vitssl.data.channels`), unset augmentation keys the data's and
    ``model.pos_embed="auto"`` the objective's ``pos_embed``, so ``config.yaml`` records
    what ran. Its numbers are checked first, before the data is read."""
    check_values(flatten(to_dict(cfg)))
    model, data = resolve_channels(cfg.model, cfg.data, cfg.train.seed)
    cfg = dataclasses.replace(cfg, model=model, data=resolve_augmentation(data))
    if cfg.model.pos_embed != "auto":
        return cfg
    factory = get_registry().get("objectives", cfg.objective.name)
    own = getattr(factory, "pos_embed", "learned")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pos_embed=own))


def completed_summary(cfg: Config, resume: bool) -> dict[str, Any] | None:
    """The saved summary of a run that ``--resume`` finds already complete, else None."""
    if not (resume and cfg.out):
        return None
    found = list_checkpoints(cfg.out)
    done = Path(cfg.out) / "summary.json"
    if (not found or found[-1][0] != cfg.train.steps or not done.is_file()
            or checkpoint_problem(found[-1][1]) is not None):
        return None
    check_resumable(resolve_run_config(cfg), Path(cfg.out), cfg)
    return json.loads(done.read_text())


def build_run(cfg: Config, ctx: distributed.Context, resume: bool = False) -> Run:
    """Resolve the config (into a copy), resume point, objective, data, optimiser and wrapper."""
    requested, cfg = cfg, resolve_run_config(cfg)
    check_entries(cfg.summary_eval.evaluators)  # before training, not after it
    micro = micro_batch_size(cfg, ctx.world_size)
    check_monitor(cfg)
    run_dir = _run_dir(cfg, ctx)
    cfg = dataclasses.replace(cfg, out=str(run_dir))
    ckpt, state = _resume_point(cfg, run_dir, resume, requested)
    start = int(state["step"]) if state is not None else 0
    if state is not None:
        cfg = _kept_init(cfg, run_dir, requested)
    objective, options, batches, init = _objective_and_data(cfg, ctx, micro, start, state)
    if init is not None:  # config.yaml records where the weights came from
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                                 init_sha256=init.sha256))
    optimizer, scheduler, scaler = _optimisation(cfg, ctx, objective, ckpt, state)
    data = iter(batches)  # a DataLoader's iterator draws its base seed from the global RNG
    if state is not None:
        restore_rng(state["rng"], ctx, cfg.train.seed, start)
    else:
        torch.manual_seed(process_seed(cfg.train.seed, ctx.rank))
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_partial(run_dir)
        truncate_metrics(run_dir, start)
        save_config(cfg, run_dir / "config.yaml")
    distributed.barrier(ctx)
    tc = cfg.train
    model = torch.compile(objective) if tc.compile else objective
    if ctx.distributed and not fsdp.is_sharded(objective):
        model = ddp(model, ctx, find_unused=True)
    log = RunLog(run_dir, total_steps=tc.steps, start_step=start, log_every=tc.log_every,
                 tensorboard=cfg.log.tensorboard, enabled=ctx.is_main)
    run = Run(cfg=cfg, ctx=ctx, objective=objective, objective_options=options, model=model,
              optimizer=optimizer, scheduler=scheduler, scaler=scaler, batches=batches,
              data=data, start_step=start, log=log, metrics=DeferredMetrics(ctx),
              cadence=Cadence(tc.log_every, tc.checkpoint_every, tc.steps, monitor_every(cfg)),
              checkpoint=ckpt)
    _announce(run, ckpt, resume)
    so_far = [r for r in read_metrics(run_dir) if r.get("step", 0) <= start]
    run.monitor = build_monitor(cfg, so_far, log)
    if init is not None and ctx.is_main:
        log.message(init.line)
    if ctx.is_main and (requested.data.mean == "auto" or requested.data.mean is None
                        and set(cfg.data.mean) - set(IMAGENET_MEAN)):
        log.message(describe_statistics(cfg.data, cfg.model.in_chans))
    return run


def _run_dir(cfg: Config, ctx: distributed.Context) -> Path:
    if cfg.out:
        return Path(cfg.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(distributed.broadcast(f"runs/{cfg.objective.name}-{stamp}", ctx))


def _resume_point(cfg: Config, run_dir: Path, resume: bool,
                  requested: Config) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from and its training state, or (None, None)."""
    if not resume:
        if list_checkpoints(run_dir):
            raise VitsslError(f"run directory '{run_dir}' already holds checkpoints; pass "
                              f"--resume to continue it or choose another --out")
        return None, None
    found = readable_checkpoint(run_dir)
    if found is None:
        return None, None
    ckpt, state = found
    if int(state["step"]) > cfg.train.steps:
        raise VitsslError(f"checkpoint {ckpt} is at step {state['step']}, past "
                          f"train.steps={cfg.train.steps}")
    check_resumable(cfg, run_dir, requested)
    return ckpt, state


def _kept_init(cfg: Config, run_dir: Path, requested: Config) -> Config:
    """A resumed run's weights come from its checkpoint: ``model.init`` stays what its
    config.yaml recorded (where the run began) and is not applied again."""
    saved = run_dir / "config.yaml"
    began = load_config(saved).model if saved.is_file() else cfg.model
    if requested.model.init not in (None, began.init):
        raise resume_conflict(run_dir)
    return dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, init=began.init, init_sha256=began.init_sha256))


def _objective_and_data(cfg: Config, ctx: distributed.Context, micro: int, start: int,
                        state: dict[str, Any] | None
                        ) -> tuple[Objective, dict, Batches, Init | None]:
    """The objective around a fresh encoder (or one started from ``model.init`` when not
    resuming), then the one pipeline with its views."""
    info = data_info(cfg.data)
    factory = get_registry().get("objectives", cfg.objective.name)
    options = objective_options(cfg.objective.name, factory, cfg.objective.options, info)
    torch.manual_seed(cfg.train.seed)
    encoder = build_encoder(cfg.model)
    init = None
    if cfg.model.init and state is None:  # before the objective copies it into a teacher
        init = load_init(cfg.model.init, encoder, cfg.model.init_sha256)
    objective = build_objective(cfg.objective.name, factory, encoder, options)
    if init is not None:
        init.start(objective, encoder)
    tc = cfg.train
    batches = pretrain_batches(cfg.data, image_size=cfg.model.image_size, batch_size=micro,
                               seed=tc.seed, num_steps=tc.steps * tc.accum_steps,
                               start_step=start * tc.accum_steps, rank=ctx.rank,
                               world_size=ctx.world_size,
                               views=objective.views(image_hw(cfg.model.image_size), cfg.data),
                               stream_state=state.get("stream") if state else None,
                               device=ctx.device, held_out=tail_held_out(cfg))
    return objective, options, batches, init


def _optimisation(cfg: Config, ctx: distributed.Context, objective: Objective,
                  ckpt: Path | None, state: dict[str, Any] | None
                  ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
                             torch.amp.GradScaler]:
    """Place (and shard) the objective; its optimiser, scheduler and scaler, restored."""
    tc, device = cfg.train, ctx.device
    objective.to(device)
    if state is not None:  # the whole model on every rank, before any sharding
        objective.load_state_dict(load_file(str(ckpt / WEIGHTS), device=str(device)))
    for block in fsdp.transformer_blocks(objective):  # the encoder's, a teacher's, a decoder's
        block.grad_checkpointing = tc.activation_checkpointing
    sharded_state = tc.strategy == "fsdp"  # optimizer state through DCP, any world size
    if sharded_state and ctx.distributed:
        fsdp.shard(objective, device, ctx.world_size, PRECISIONS[tc.precision])
    optimizer = build_optimizer(objective, lr=tc.lr, weight_decay=tc.weight_decay,
                                betas=tuple(tc.betas))
    scheduler = build_scheduler(optimizer, total_steps=tc.steps, warmup_steps=tc.warmup_steps,
                                min_lr=tc.min_lr, schedule=tc.schedule)
    scaler_type = ShardedGradScaler if fsdp.is_sharded(objective) else torch.amp.GradScaler
    scaler = scaler_type(device.type, enabled=tc.precision == "fp16")
    if state is not None:
        load_optimizer(ckpt, state, objective, optimizer, sharded_state)
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    return optimizer, scheduler, scaler


def ddp(model: nn.Module, ctx: distributed.Context, find_unused: bool) -> nn.Module:
    """``model`` in DDP; ``find_unused``: DDP looks for parameters without a gradient
    (the first step, before :func:`vitssl.train.step.freeze_unused`)."""
    device = ctx.device
    return DistributedDataParallel(model, gradient_as_bucket_view=True,
                                   device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def _announce(run: Run, ckpt: Path | None, resume: bool) -> None:
    if not run.ctx.is_main:
        return
    cfg, ctx, tc = run.cfg, run.ctx, run.cfg.train
    if ckpt is not None and run.batches.resume_note:
        run.log.message(run.batches.resume_note)
    where = (f"{ctx.world_size} processes on {ctx.device.type} ({tc.strategy})"
             if ctx.distributed else str(ctx.device))
    what = f"resuming from {ckpt.name}" if ckpt is not None else (
        "no checkpoint found, starting at step 0" if resume else "starting")
    run.log.message(f"pretrain {cfg.objective.name}: {cfg.model.name} at "
                    f"{image_size_text(cfg.model.image_size)}, {tc.steps} steps x "
                    f"{tc.batch_size} images on {where}; {what}; run directory {run.run_dir}")
    run.log.message(describe_workers(cfg.data, run.batches.num_workers, ctx.world_size))
