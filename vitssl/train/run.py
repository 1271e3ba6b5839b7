"""The one pretraining loop: any objective plugin, one process or ``torchrun`` DDP/FSDP.

Step ``s`` consumes data steps ``s * accum .. s * accum + accum - 1`` of the
deterministic batch pipeline; each sample also gets a seed (``"sample_seed"``)
from its position in the run's sample stream, which objectives may use for
their own randomness. Together with the saved optimizer, scheduler and RNG
states this makes a resumed run repeat an uninterrupted one step for step,
and a run on N ranks match one process with the same global batch.

The loop never waits on the device between logging steps: losses and metrics
stay on the device and are read (and checked for non-finite values) in one
transfer at logging and checkpoint steps.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.nn.parallel import DistributedDataParallel

from vitssl.config import (
    Config,
    config_from_dict,
    flatten,
    image_hw,
    image_size_text,
    save_config,
    to_dict,
)
from vitssl.data.augment import resolve_augmentation
from vitssl.data.pipeline import pretrain_batches
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.plugins import get_registry
from vitssl.train import distributed, fsdp
from vitssl.train.activations import (
    disable_activation_checkpointing,
    enable_activation_checkpointing,
)
from vitssl.train.checkpoint import (
    WEIGHTS,
    export_name,
    latest_checkpoint,
    list_checkpoints,
    load_encoder,
    load_training_state,
    remove_partial,
)
from vitssl.train.optim import build_optimizer
from vitssl.train.runlog import RunLog, read_metrics, truncate_metrics
from vitssl.train.schedule import build_scheduler
from vitssl.train.summary import format_summary, summary_evaluation
from vitssl.train.train_state import (
    load_optimizer,
    restore_rng,
    save_run_checkpoint,
    stream_position,
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FINAL_WINDOW = 10  # steps averaged for the summary's final loss and metrics


def sample_seeds(seed: int, first: int, count: int) -> torch.Tensor:
    """Seeds of samples ``first .. first + count - 1`` of the run's sample stream.

    A sample's seed depends only on its position in the stream, so it is the
    same whatever the number of ranks or accumulation steps.
    """
    base = (seed + 1) * 2 ** 40
    return torch.arange(base + first, base + first + count, dtype=torch.long)


def _check(cfg: Config, world_size: int) -> int:
    """Validate the train section; return the per-rank micro-batch size."""
    tc = cfg.train
    if tc.precision not in PRECISIONS:
        raise VitsslError(f"unknown train.precision '{tc.precision}'; accepted: "
                          f"{', '.join(PRECISIONS)}")
    if tc.strategy not in fsdp.STRATEGIES:
        raise VitsslError(f"unknown train.strategy '{tc.strategy}'; accepted: "
                          f"{', '.join(fsdp.STRATEGIES)}")
    if tc.steps < 1 or tc.batch_size < 1 or tc.accum_steps < 1:
        raise VitsslError("train.steps, train.batch_size and train.accum_steps must be >= 1")
    share = world_size * tc.accum_steps
    if tc.batch_size % share:
        raise VitsslError(f"train.batch_size {tc.batch_size} must be divisible by "
                          f"world size x accum_steps = {share}")
    if tc.checkpoint_every < 1 or tc.keep_checkpoints < 1:
        raise VitsslError("train.checkpoint_every and train.keep_checkpoints must be >= 1")
    if tc.warmup_steps < 0 or tc.lr <= 0 or tc.grad_clip < 0:
        raise VitsslError("train.warmup_steps and train.grad_clip must be >= 0 (grad_clip 0 "
                          "turns clipping off) and train.lr > 0")
    if not all(0.0 <= b < 1.0 for b in tc.betas):
        raise VitsslError(f"train.betas must lie in [0, 1), got {list(tc.betas)}")
    image_hw(cfg.model.image_size)
    dc = cfg.data
    if dc.num_workers < 0:
        raise VitsslError(f"data.num_workers must be >= 0, got {dc.num_workers}")
    lo, hi = dc.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise VitsslError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {[lo, hi]}")
    lo, hi = dc.crop_ratio
    if not 0.0 < lo <= hi:
        raise VitsslError(f"data.crop_ratio must satisfy 0 < low <= high, got {[lo, hi]}")
    if not 0.0 <= dc.translate < 1.0:
        raise VitsslError(f"data.translate must lie in [0, 1), got {dc.translate}")
    return tc.batch_size // share


def _run_dir(cfg: Config, ctx: distributed.Context) -> Path:
    if cfg.out:
        return Path(cfg.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = distributed.broadcast_text(f"runs/{cfg.objective.name}-{stamp}", ctx)
    return Path(name)


# What may change when a run is resumed; everything else must match its config.yaml.
RESUMABLE_CHANGES = ("out", "train.steps", "train.device", "train.log_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "data.num_workers",
                     "train.activation_checkpointing", "train.compile",
                     "summary_eval.", "log.")


def _check_resumable(cfg: Config, run_dir: Path) -> None:
    """Refuse to resume a run with a config that changes what its checkpoints hold."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    before = flatten(to_dict(config_from_dict(yaml.safe_load(path.read_text()) or {})))
    now = flatten(to_dict(cfg))
    changed = [f"{key}: {before.get(key)!r} -> {now.get(key)!r}"
               for key in sorted(set(before) | set(now))
               if before.get(key) != now.get(key) and not key.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise VitsslError(f"cannot resume {run_dir} with a changed config ({'; '.join(changed)});"
                          f" drop those flags, or start a new run with another --out")


def _build_objective(cfg: Config, batches: Any) -> nn.Module:
    """The objective around a fresh encoder; ``num_classes`` comes from the data if needed."""
    factory = get_registry().get("objectives", cfg.objective.name)
    if getattr(factory, "requires_labels", False) and not batches.labelled:
        raise VitsslError(f"objective '{cfg.objective.name}' needs labels but '{cfg.data.spec}' "
                          f"is unlabelled; use a labelled spec such as builtin:digits")
    options = dict(cfg.objective.options)
    accepts = inspect.signature(factory).parameters
    if "num_classes" in accepts and "num_classes" not in options and batches.num_classes:
        options["num_classes"] = batches.num_classes
    torch.manual_seed(cfg.train.seed)
    encoder = build_encoder(cfg.model)
    try:
        return factory(encoder=encoder, **options)
    except TypeError as exc:
        raise VitsslError(f"objective '{cfg.objective.name}' does not accept options "
                          f"{cfg.objective.options}: {exc}") from None


def _declared_views(declared: Callable, cfg: Config) -> Callable:
    """An objective's views at the model's size: an int when square, else (height, width).

    Views that cannot follow a non-square size are refused with one line.
    """
    height, width = image_hw(cfg.model.image_size)
    if height == width:
        return declared(height, cfg.data)
    try:
        return declared((height, width), cfg.data)
    except (TypeError, ValueError, VitsslError) as exc:
        raise VitsslError(f"objective '{cfg.objective.name}' cannot make its views for the "
                          f"non-square model.image_size [{height}, {width}] "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__});"
                          f" use a square size") from None


def _metrics(out: dict[str, Any]) -> dict[str, torch.Tensor | float]:
    """An objective's metrics, tensors left on their device (read at logging steps)."""
    return {k: (v.detach().double() if isinstance(v, torch.Tensor) else float(v))
            for k, v in sorted(out.items())
            if k != "loss" and isinstance(v, (int, float, torch.Tensor))}


def _to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch dict on ``device``; from pinned memory on CUDA."""
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def _read_pending(pending: list[dict[str, Any]], device: torch.device,
                  ctx: distributed.Context) -> list[dict[str, float]]:
    """Rank-averaged loss and metrics of the steps since the last read: one transfer."""
    values: list[torch.Tensor] = []
    for entry in pending:
        for v in (entry["loss"], *entry["metrics"].values()):
            values.append(v.double() if isinstance(v, torch.Tensor) else
                          torch.tensor(v, dtype=torch.float64))
    flat = distributed.all_mean(torch.stack([v.to(device) for v in values]), ctx).tolist()
    out, i = [], 0
    for entry in pending:
        names = ["loss", *entry["metrics"]]
        out.append(dict(zip(names, flat[i:i + len(names)], strict=True)))
        i += len(names)
    return out


def _call_hook(objective: nn.Module, name: str, step: int, total_steps: int) -> None:
    """An objective's optional step hook (once per optimiser step, on every rank)."""
    hook = getattr(objective, name, None)
    if callable(hook):
        hook(step, total_steps)


def _exported_encoder(objective: nn.Module) -> nn.Module | None:
    try:
        return objective.get_submodule(export_name(objective))
    except AttributeError:
        return None


def pretrain(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Pretrain ``cfg.model`` with ``cfg.objective``; return (and print) the run summary."""
    ctx = distributed.setup(cfg.train.device)
    try:
        return _pretrain(cfg, resume, ctx)
    finally:
        distributed.teardown(ctx)


def _pretrain(cfg: Config, resume: bool, ctx: distributed.Context) -> dict[str, Any]:
    tc = cfg.train
    cfg.data = resolve_augmentation(cfg.data)
    micro = _check(cfg, ctx.world_size)
    run_dir = _run_dir(cfg, ctx)
    cfg.out = str(run_dir)
    device = ctx.device

    ckpt = None
    if resume:
        ckpt = latest_checkpoint(run_dir)
    elif list_checkpoints(run_dir):
        raise VitsslError(f"run directory '{run_dir}' already holds checkpoints; pass --resume "
                          f"to continue it or choose another --out")
    state = load_training_state(ckpt) if ckpt is not None else None
    start = int(state["step"]) if state is not None else 0
    if start > tc.steps:
        raise VitsslError(f"checkpoint {ckpt} is at step {start}, past train.steps={tc.steps}")
    if ckpt is not None:
        _check_resumable(cfg, run_dir)
        done = run_dir / "summary.json"
        if start == tc.steps and done.is_file():
            if ctx.is_main:
                print(f"{run_dir} is already complete at step {start}; raise train.steps "
                      f"to continue it", file=sys.stderr)
            return json.loads(done.read_text())

    def make_batches(views: Callable | None = None) -> Any:
        return pretrain_batches(cfg.data, image_size=cfg.model.image_size, batch_size=micro,
                                seed=tc.seed, num_steps=tc.steps * tc.accum_steps,
                                start_step=start * tc.accum_steps, rank=ctx.rank,
                                world_size=ctx.world_size, views=views,
                                stream_state=state.get("stream") if state else None)

    batches = make_batches()
    objective = _build_objective(cfg, batches)
    declared = getattr(objective, "views", None)
    if callable(declared):
        batches = make_batches(_declared_views(declared, cfg))

    objective.to(device)
    if state is not None:  # the whole model on every rank, before any sharding
        objective.load_state_dict(load_file(str(ckpt / WEIGHTS), device=str(device)))
    if tc.activation_checkpointing:
        enable_activation_checkpointing(objective)
    if tc.compile:
        objective.forward = torch.compile(objective.forward)
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

    data: Iterator = iter(batches)
    if state is not None:
        restore_rng(state["rng"], ctx, tc.seed, start)
    else:
        torch.manual_seed(tc.seed * 7_919 + 17 + ctx.rank)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_partial(run_dir)
        truncate_metrics(run_dir, start)
        save_config(cfg, run_dir / "config.yaml")
    distributed.barrier(ctx)

    model: nn.Module = objective
    if ctx.distributed and not fsdp.is_sharded(objective):
        model = DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    log = RunLog(run_dir, total_steps=tc.steps, start_step=start, log_every=tc.log_every,
                 tensorboard=cfg.log.tensorboard, enabled=ctx.is_main)
    if ctx.is_main:
        where = (f"{ctx.world_size} processes on {device.type} ({tc.strategy})"
                 if ctx.distributed else str(device))
        what = f"resuming from {ckpt.name}" if ckpt is not None else (
            "no checkpoint found, starting at step 0" if resume else "starting")
        note = getattr(batches, "resume_note", None)
        if ckpt is not None and note:
            log.message(note)
        log.message(f"pretrain {cfg.objective.name}: {cfg.model.name} at "
                    f"{image_size_text(cfg.model.image_size)}, {tc.steps} steps x "
                    f"{tc.batch_size} images on "
                    f"{where}; {what}; run directory {run_dir}")

    autocast_dtype = PRECISIONS[tc.precision]
    params = [p for p in objective.parameters() if p.requires_grad]
    last_good = ckpt
    images_seen, train_time = 0, 0.0
    pending: list[dict[str, Any]] = []  # steps whose loss is still on the device
    model.train()
    step = start
    try:
        for step in range(start, tc.steps):
            t0 = time.perf_counter()
            done = step + 1
            optimizer.zero_grad(set_to_none=True)
            loss_sum: torch.Tensor | float = 0.0
            metric_sums: dict[str, torch.Tensor | float] = {}
            for i in range(tc.accum_steps):
                data_step = step * tc.accum_steps + i
                with torch.random.fork_rng(devices=[]):  # data RNG stays apart
                    batch = _to_device(next(data), device)
                first = (data_step * ctx.world_size + ctx.rank) * micro
                batch["sample_seed"] = sample_seeds(tc.seed, first, micro).to(device)
                batch["step"], batch["total_steps"] = step, tc.steps
                last_micro = i == tc.accum_steps - 1
                fsdp.set_micro_step(model, last_micro)
                sync = (model.no_sync() if isinstance(model, DistributedDataParallel)
                        and not last_micro else contextlib.nullcontext())
                with sync:
                    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                        enabled=autocast_dtype is not None):
                        out = model(batch)
                    loss = out["loss"]
                    scaler.scale(loss / tc.accum_steps).backward()
                loss_sum = loss_sum + loss.detach().double()
                for k, v in _metrics(out).items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + v
            pending.append({"step": done, "loss": loss_sum / tc.accum_steps,
                            "metrics": {k: v / tc.accum_steps for k, v in metric_sums.items()}})
            save_now = done % tc.checkpoint_every == 0 or done == tc.steps
            read_now = save_now or done % max(1, tc.log_every) == 0
            if read_now:  # the one host sync between logging steps
                values = _read_pending(pending, device, ctx)
                bad = [(e["step"], v["loss"]) for e, v in zip(pending, values, strict=True)
                       if not math.isfinite(v["loss"])]
                if bad:
                    (bad_step, bad_loss), = bad[:1]
                    kept = f"the last good checkpoint is {last_good}" if last_good else \
                        "no checkpoint was written yet"
                    what = "without applying it" if bad_step == done else \
                        f"at step {done} without saving what followed it"
                    raise VitsslError(f"loss became non-finite ({bad_loss}) at step {bad_step}; "
                                      f"stopping {what}; {kept} (try a lower train.lr or "
                                      f"train.precision=fp32)")
            scaler.unscale_(optimizer)
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            _call_hook(objective, "before_optimizer_step", step, tc.steps)
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            _call_hook(objective, "after_optimizer_step", step, tc.steps)
            dt = time.perf_counter() - t0
            images_seen += tc.batch_size
            train_time += dt
            pending[-1].update(lr=lr, dt=dt)
            if read_now:
                for entry, value in zip(pending, values, strict=True):
                    log.log({"step": entry["step"], **value, "lr": entry["lr"],
                             "images_per_s": tc.batch_size / entry["dt"]})
                pending.clear()
            if save_now:
                last_good = save_run_checkpoint(
                    run_dir, done, objective, optimizer, cfg,
                    {"scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                     "data_step": done * tc.accum_steps,
                     **stream_position(batches, ctx)}, ctx, sharded_state)
    finally:
        log.close()
        if tc.activation_checkpointing:
            disable_activation_checkpointing(objective)
        if tc.compile:
            objective.__dict__.pop("forward", None)

    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": tc.steps,
                               "world_size": ctx.world_size}
    if not ctx.is_main:
        return summary
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= tc.steps]
    window = records[-FINAL_WINDOW:]
    keys = [k for k in (window[-1] if window else {}) if k not in ("step", "loss", "lr",
                                                                   "images_per_s")]
    summary.update({
        "final_loss": sum(r["loss"] for r in window) / max(1, len(window)),
        "final_window": len(window),
        "final_metrics": {k: sum(r[k] for r in window) / len(window) for k in keys},
        "images_per_s": images_seen / train_time if train_time else 0.0,
        "skipped": int(getattr(batches, "skipped", 0)),
        "train_s": train_time,
    })
    # A sharded model cannot run on rank 0 alone: evaluate the gathered checkpoint.
    encoder = load_encoder(last_good, device)[0] if fsdp.is_sharded(objective) \
        else _exported_encoder(objective)
    if cfg.summary_eval.enabled and encoder is not None:
        log_tty = sys.stderr.isatty()
        print("evaluating: pretrained encoder vs random init vs raw pixels ...",
              file=sys.stderr, flush=True)
        summary["evaluation"] = summary_evaluation(encoder, cfg, device, progress=log_tty)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary), flush=True)
    return summary
