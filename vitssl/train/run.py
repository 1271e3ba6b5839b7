"""The one pretraining loop: any objective plugin, one process or ``torchrun`` DDP/FSDP.

Step ``s`` consumes data steps ``s * accum .. s * accum + accum - 1`` of the
deterministic batch pipeline; each sample also gets a seed (``"sample_seed"``)
from its position in the run's sample stream (:mod:`vitssl.seeds`). Together
with the saved optimizer, scheduler and RNG states this makes a resumed run
repeat an uninterrupted one step for step, and a run on N ranks match one
process with the same global batch. Read top to bottom: :func:`pretrain`
builds a :class:`~vitssl.train.build.Run`, calls
:func:`~vitssl.train.step.train_step` once per step, logs and checkpoints,
then :func:`finish` writes the summary.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from torch import nn

from vitssl.config import Config
from vitssl.train import distributed
from vitssl.train.activations import disable_activation_checkpointing
from vitssl.train.build import Run, build_run, completed_summary
from vitssl.train.checkpoint import load_encoder
from vitssl.train.runlog import read_metrics
from vitssl.train.step import train_step
from vitssl.train.summary import format_summary, summary_evaluation
from vitssl.train.train_state import save_run_checkpoint, stream_position

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
        try:
            for step in range(run.start_step, run.cfg.train.steps):
                train_step(run, step)
                if run.metrics.due(step + 1):
                    run.metrics.flush(run.log, run.cfg.train.batch_size)
                if run.metrics.saves(step + 1):
                    save(run, step + 1)
        finally:
            close(run)
        return finish(run)
    finally:
        distributed.teardown(ctx)


def save(run: Run, step: int) -> None:
    """Checkpoint ``step`` (collective); it becomes the run's newest good checkpoint."""
    tc = run.cfg.train
    state = {"scheduler": run.scheduler.state_dict(),
             "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
             "data_step": step * tc.accum_steps, **stream_position(run.batches, run.ctx)}
    run.checkpoint = save_run_checkpoint(run, step, state)


def close(run: Run) -> None:
    """Undo what the run did to the objective for training (the log is closed too)."""
    run.log.close()
    if run.cfg.train.activation_checkpointing:
        disable_activation_checkpointing(run.objective)
    if run.cfg.train.compile:
        run.objective.__dict__.pop("forward", None)


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
    records = [r for r in read_metrics(run.run_dir) if r.get("step", 0) <= tc.steps]
    window = records[-FINAL_WINDOW:]
    keys = [k for k in (window[-1] if window else {})
            if k not in ("step", "loss", "lr", "images_per_s")]
    summary.update({
        "final_loss": sum(r["loss"] for r in window) / max(1, len(window)),
        "final_window": len(window),
        "final_metrics": {k: sum(r[k] for r in window) / len(window) for k in keys},
        "images_per_s": run.images_seen / run.train_time if run.train_time else 0.0,
        "skipped": int(run.batches.skipped),
        "train_s": run.train_time,
    })
    if run.cfg.summary_eval.enabled:
        print("evaluating: pretrained encoder vs random init vs raw pixels ...",
              file=sys.stderr, flush=True)
        summary["evaluation"] = summary_evaluation(exported_encoder(run), run.cfg,
                                                   run.ctx.device, progress=sys.stderr.isatty())
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary), flush=True)
    return summary
