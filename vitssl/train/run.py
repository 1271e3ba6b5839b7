"""The one pretraining loop: any objective plugin, one process or ``torchrun`` DDP/FSDP.

Sample randomness comes from the position in the sample stream (:mod:`vitssl.seeds`), so a
resumed run repeats an uninterrupted one and N ranks match one process. :func:`pretrain`
builds a :class:`~vitssl.train.build.Run`, trains it with :func:`run_steps`, then :func:`finish`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from torch import nn

from vitssl.config import Config
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.train import distributed, fsdp
from vitssl.train.build import Run, build_run, completed_summary
from vitssl.train.checkpoint import (
    OPTIMIZER,
    load_encoder,
    save_checkpoint,
    staging_dir,
    step_dir,
    submodule_state,
)
from vitssl.train.rollback import rolled_back
from vitssl.train.runlog import read_metrics
from vitssl.train.sharded_state import save_tensors
from vitssl.train.step import backward, freeze_unused, update
from vitssl.train.step_metrics import NonFiniteLoss
from vitssl.train.summary import format_summary, last_health, summary_evaluation
from vitssl.train.train_state import gather_rng_states, stream_position

FINAL_WINDOW = 10  # steps averaged for the summary's final loss and metrics


def pretrain(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Pretrain ``cfg.model`` with ``cfg.objective``; return (and print) the run summary."""
    ctx = distributed.setup(cfg.train.device)
    try:
        done = completed_summary(cfg, resume)
        if done is not None:
            if ctx.is_main:
                print(f"{cfg.out} is already complete at step {cfg.train.steps}; raise "
                      f"train.steps to continue it", file=sys.stderr)
            return done
        run = build_run(cfg, ctx, resume)
        while True:
            failure = None
            try:
                for _ in run_steps(run, run.start_step, run.cfg.train.steps):
                    pass
            except NonFiniteLoss as exc:
                failure = exc
            finally:
                run.log.close()
            if failure is None:
                return finish(run)
            run = rolled_back(run, failure)  # or raises it: train.on_nonfinite=stop
    finally:
        distributed.teardown(ctx)


def run_steps(run: Run, start: int, stop: int) -> Iterator[int]:
    """Take optimiser steps ``start .. stop - 1``, logged and checkpointed at the run's
    cadence, yielding the steps done after each."""
    for step in range(start, stop):
        started = time.perf_counter()
        backward(run, step)
        if step == start:
            freeze_unused(run)
        update(run, step)
        seconds = time.perf_counter() - started
        run.metrics.took(seconds)
        run.train_time += seconds
        done = step + 1
        alarmed = run.cadence.reads(done) and _read(run, done)
        if run.cadence.saves(done):
            save_run_checkpoint(run, done)
        if alarmed:
            raise VitsslError(f"stopping at step {done} on the alarm above "
                              f"(monitor.on_alarm=stop); the newest checkpoint is "
                              f"{run.checkpoint or 'not written yet'}")
        yield done


def _read(run: Run, step: int) -> bool:
    """Log the pending steps with the monitor's check when due; whether an alarm stops."""
    monitor = run.monitor
    health = {}
    if monitor is not None and monitor.due(step):
        health = _health(run, step)
    logged = run.metrics.flush(run.log, run.cfg.train.batch_size, health)
    if monitor is None:
        return False
    return monitor.review(logged, step, run.log)


def _health(run: Run, step: int) -> dict[str, float]:
    """The monitor's check of the exported encoder, measured on rank 0 and sent to every
    rank; a sharded encoder is gathered there first (collective)."""
    name = run.objective.exports()["encoder"]
    encoder = run.objective.get_submodule(name) if run.ctx.is_main else None
    if run.sharded:
        weights = fsdp.full_state_dict(run.objective)  # on rank 0 only
        if run.ctx.is_main:
            encoder = build_encoder(run.cfg.model)
            encoder.load_state_dict(submodule_state(weights, name))
            encoder.to(run.ctx.device)
    return run.monitor.measure_on_main(encoder, step, run.ctx)


def save_run_checkpoint(run: Run, step: int) -> None:
    """Write checkpoint ``step`` (collective); it becomes ``run.checkpoint``. Under
    ``train.strategy=fsdp`` each rank writes its optimizer shard through DCP."""
    run_dir, objective, optimizer, cfg, ctx = (run.run_dir, run.objective, run.optimizer,
                                               run.cfg, run.ctx)
    sharded = cfg.train.strategy == "fsdp"
    state = {"scheduler": run.scheduler.state_dict(),
             "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
             "data_step": step * cfg.train.accum_steps, **stream_position(run.batches, ctx),
             "rng": gather_rng_states(ctx)}
    weights = fsdp.full_state_dict(objective) if fsdp.is_sharded(objective) else None
    if sharded:
        tensors, groups = fsdp.sharded_optimizer_state(objective, optimizer)
        if ctx.is_main:
            staging_dir(run_dir, step, fresh=True)
        distributed.barrier(ctx)
        save_tensors(tensors, staging_dir(run_dir, step) / OPTIMIZER)
        state["optimizer_param_groups"] = groups
    else:
        state["optimizer"] = optimizer.state_dict() if ctx.is_main else None
    if ctx.is_main:
        save_checkpoint(run_dir, step, objective, cfg, state, keep=cfg.train.keep_checkpoints,
                        weights=weights, staged=sharded, options=run.objective_options)
    distributed.barrier(ctx)
    run.checkpoint = step_dir(run_dir, step)


def exported_encoder(run: Run) -> nn.Module:
    """The encoder the objective exports; a sharded one is read back from the checkpoint."""
    if run.sharded:  # a sharded model cannot run on rank 0 alone
        return load_encoder(run.checkpoint, run.ctx.device)[0]
    return run.objective.get_submodule(run.objective.exports()["encoder"])


def finish(run: Run) -> dict[str, Any]:
    """The run summary: final loss and metrics, speed, and the summary evaluation."""
    tc = run.cfg.train
    summary: dict[str, Any] = {"run_dir": str(run.run_dir), "steps": tc.steps,
                               "world_size": run.ctx.world_size}
    if not run.ctx.is_main:
        return summary
    every = [r for r in read_metrics(run.run_dir) if r.get("step", 0) <= tc.steps]
    records = [r for r in every if "loss" in r]  # step records, not alarms or rollbacks
    window = records[-FINAL_WINDOW:]
    keys = [k for k in (window[-1] if window else {})
            if k not in ("step", "loss", "lr", "images_per_s")
            and all(k in r for r in window)]
    summary.update({
        "final_loss": sum(r["loss"] for r in window) / max(1, len(window)),
        "final_window": len(window),
        "final_metrics": {k: sum(r[k] for r in window) / len(window) for k in keys},
        "images_per_s": (tc.steps - run.start_step) * tc.batch_size / run.train_time
        if run.train_time else 0.0,
        "skipped": int(run.batches.skipped),
        "train_s": run.train_time,
    })
    if run.monitor is not None:
        summary["monitor"] = {**last_health(records), "seconds": run.monitor.seconds,
                              "alarms": [r["alarm"] for r in every if "alarm" in r]}
    if run.cfg.summary_eval.enabled:
        print("evaluating: pretrained encoder vs random init vs raw pixels ...",
              file=sys.stderr, flush=True)
        summary["evaluation"] = summary_evaluation(exported_encoder(run), run.cfg,
                                                   run.ctx.device, progress=sys.stderr.isatty())
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary), flush=True)
    return summary
