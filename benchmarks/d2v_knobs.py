"""data2vec2's knobs at equal steps, and their step cost measured side by side.

``train``: each variant (ssl_quality.py's ``NAME [KEY=VALUE ...]``: an objective, then
config overrides, a key without a dot being the objective's own) pretrains the same encoder for
--steps steps on --data (ssl_quality.py's training and curve probe: k-NN, k = 20,
and the ridge linear probe on a seeded, class-balanced subset of --probe-n
training and --probe-n test images); one JSON line per variant is appended to
--out. Quality is compared at equal steps, which does not depend on the machine's
load; the wall time per step does, so ``cost`` times the variants' steps
interleaved in one process (loop_step.py, a fixed batch, median of --repeats),
and a variant's time ratio is its step-cost ratio × its steps-to-quality ratio.

    python benchmarks/d2v_knobs.py train --steps 120 --variants "mae" \
        "data2vec2 clone_batch=1"
    python benchmarks/d2v_knobs.py cost --variants "mae" "data2vec2"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: sleep, do not spin

import torch  # noqa: E402
from loop_step import interleaved_times, loop_step  # noqa: E402
from ssl_quality import NEVER, Scorer, _config, train_for_budget, variant  # noqa: E402

from vitssl.train import distributed  # noqa: E402


def train(args: argparse.Namespace) -> None:
    scorer = None
    for i, entry in enumerate(args.variants):
        cfg = _config(entry, args.data, args, NEVER, f"/tmp/d2v-knobs/{os.getpid()}-{i}")
        if scorer is None:
            ctx = distributed.setup(cfg.train.device)
            scorer = Scorer(cfg, args)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        encoder, record = train_for_budget(cfg, ctx, args, scorer)
        knn, linear = record["curve"][-1][1:3]
        row = {"variant": entry, "steps": record["steps"], "knn": knn, "linear": linear,
               "train_s": round(record["train_s"], 1), "wall_s": round(time.perf_counter() - t0)}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def cost(args: argparse.Namespace) -> None:
    steps = {}
    for entry in args.variants:
        objective, sets = variant(entry)
        size = [f"model.image_size={args.image_size}", "data.augment=false"]
        batch = next((int(s.split("=")[1]) for s in sets if s.startswith("train.batch_size=")),
                     args.batch_size)
        steps[entry] = loop_step(objective, size + sets, batch)[0]
    times = interleaved_times(steps, args.repeats)
    base = statistics.median(times[args.variants[0]])
    print(f"| variant | median s/step | min s/step | vs {args.variants[0]} |\n|---|---|---|---|")
    for entry, t in times.items():
        print(f"| {entry} | {statistics.median(t):.3f} | {min(t):.3f} | "
              f"{statistics.median(t) / base:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("train", "cost"))
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--data", default="builtin:fashion-mnist")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--probe-n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="d2v-knobs.jsonl")
    args = parser.parse_args()
    n = args.probe_n
    args.__dict__.update(model=None, quick=False, set=[], curve_every_s=float("inf"), budget_s=0.0,
                         timing_steps=0, probe_train=n, linear_train=n, probe_test=n,
                         curve_train=n, curve_test=n, linear="ridge")
    (train if args.mode == "train" else cost)(args)


if __name__ == "__main__":
    main()
