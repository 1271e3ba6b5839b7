"""``train.on_nonfinite=rollback``: back to the newest good checkpoint at half the learning
rate, at most ``train.max_rollbacks`` times; each rollback is a record in ``metrics.jsonl``."""

from __future__ import annotations

from vitssl.errors import VitsslError
from vitssl.train.build import Run, build_run
from vitssl.train.runlog import read_metrics
from vitssl.train.step_metrics import NonFiniteLoss

LR_FACTOR = 0.5


def rolled_back(run: Run, failure: NonFiniteLoss) -> Run:
    """The run rebuilt from its newest checkpoint (the initial weights when none was written)
    with its learning rate halved; ``failure`` re-raised under ``stop`` or past the limit."""
    tc = run.cfg.train
    if tc.on_nonfinite != "rollback":
        raise failure
    taken = sum(1 for r in read_metrics(run.run_dir) if "rollback" in r)
    if taken >= tc.max_rollbacks:
        raise VitsslError(f"{failure}; {taken} rollbacks already taken "
                          f"(train.max_rollbacks={tc.max_rollbacks})") from None
    fresh = build_run(run.cfg, run.ctx, resume=True)
    for group in fresh.optimizer.param_groups:
        group["lr"] *= LR_FACTOR
    fresh.scheduler.base_lrs = [lr * LR_FACTOR for lr in fresh.scheduler.base_lrs]
    fresh.train_time = run.train_time
    scale = fresh.scheduler.base_lrs[0] / tc.lr
    record = {"step": fresh.start_step, "rollback": taken + 1, "bad_step": failure.step,
              "terms": {k: str(v) for k, v in failure.terms.items()}, "lr_scale": scale}
    fresh.log.event(record, f"rollback {taken + 1}/{tc.max_rollbacks}: {failure}; going on "
                            f"from step {fresh.start_step} at {scale:g} x train.lr")
    if fresh.monitor is not None:
        fresh.monitor.records.append(record)
    return fresh
