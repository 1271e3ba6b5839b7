"""What the run monitor costs: process CPU time of training steps against health checks and
probes of the same run, and the share of a whole run at the monitor's defaults.

    python benchmarks/monitor_cost.py [--steps 20] [--set key=value ...]

Times ``--steps`` optimiser steps of the default run (``configs/default.yaml``), then as
many health checks and probes, in one process; the share assumes ``train.steps // 20``
checks and a probe every ``monitor.probe_every`` checks and at the last.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from vitssl.config import load_config
from vitssl.train import distributed
from vitssl.train.build import build_run
from vitssl.train.step import backward, freeze_unused, update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [f"out={out}", "summary_eval.enabled=false", *args.overrides])
        ctx = distributed.setup(cfg.train.device)
        run = build_run(cfg, ctx)
        encoder = run.objective.get_submodule(run.objective.exports()["encoder"])
        started = time.process_time()
        for step in range(args.steps):
            backward(run, step)
            if step == 0:
                freeze_unused(run)
            update(run, step)
        per_step = (time.process_time() - started) / args.steps
        monitor, probe = run.monitor, run.monitor.probe
        run.monitor.probe = None
        started = time.process_time()
        for _ in range(args.steps):
            monitor.measure(encoder, 1, ctx.device)
        per_check = (time.process_time() - started) / args.steps
        monitor.probe = probe
        started = time.process_time()
        for _ in range(max(1, args.steps // 4)):
            monitor._probe(encoder)
        per_probe = (time.process_time() - started) / max(1, args.steps // 4)
        total = cfg.train.steps
        checks = -(-total // monitor.every)  # every monitor.every steps and the last
        probes = -(-checks // cfg.monitor.probe_every)
        share = (checks * per_check + probes * per_probe) / (total * per_step)
        print(f"CPU s: step {per_step:.3f}, health check {per_check:.3f}, probe "
              f"{per_probe:.3f}; {checks} checks + {probes} probes over {total} steps: "
              f"{100 * share:.1f} % of the training time")


if __name__ == "__main__":
    main()
