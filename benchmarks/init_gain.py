"""What ``--init`` buys: ``mae`` on ``builtin:fashion-mnist`` from scratch versus started from
a ``mae`` run on ``builtin:digits``, k-NN top-1 on Fashion-MNIST against training steps.

    python benchmarks/init_gain.py --source-steps 200 --steps 40 --every 20 --out runs/init-gain

Prints a Markdown table (and writes ``OUT/init_gain.json``): step 0 is the random encoder of
the scratch run and the digits run's encoder. k-NN (k=20) on a seeded subset of the split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitssl.config import load_config, normalisation
from vitssl.data.tasks import load_task
from vitssl.plugins import get_registry
from vitssl.train.checkpoint import list_checkpoints, load_encoder
from vitssl.train.run import pretrain
from vitssl.train.summary import capped, random_init_encoder

DATA = "builtin:fashion-mnist"


def _cfg(out: Path, data: str, steps: int, every: int, *extra: str):
    return load_config(None, [f"out={out}", "objective.name=mae", f"data.spec={data}",
                              f"train.steps={steps}", f"train.checkpoint_every={every}",
                              "train.keep_checkpoints=100", "train.device=cpu",
                              "summary_eval.enabled=false", *extra])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source-steps", type=int, default=200)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--train", type=int, default=2000, help="k-NN training images")
    p.add_argument("--test", type=int, default=1000, help="k-NN test images")
    p.add_argument("--out", default="runs/init-gain")
    args = p.parse_args()
    out = Path(args.out)
    source = out / "digits"
    if not list_checkpoints(source):
        pretrain(_cfg(source, "builtin:digits", args.source_steps, args.source_steps))
    runs = {"scratch": out / "scratch", "init": out / "init"}
    for name, run in runs.items():
        if not list_checkpoints(run):
            pretrain(_cfg(run, DATA, args.steps, args.every,
                          *([f"model.init={source}"] if name == "init" else [])))
    cfg = load_encoder(source)[1]
    task = capped(load_task(DATA, cfg.model.image_size, mean=normalisation(cfg.data)[0],
                            std=normalisation(cfg.data)[1]), args.train, args.test)
    knn = get_registry().get("evaluators", "knn")(k=[20])
    table: dict[str, dict[int, float]] = {}
    for name, run in runs.items():
        start = load_encoder(source)[0] if name == "init" else random_init_encoder(
            load_encoder(run)[1])
        encoders = [(0, start)] + [(step, load_encoder(ckpt)[0])
                                   for step, ckpt in list_checkpoints(run)]
        table[name] = {step: knn.run(enc.eval(), task)["knn_k20_top1"] for step, enc in encoders}
    steps = sorted(table["scratch"])
    print("| start | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[s]:.1f}" for s in steps) + " |")
    (out / "init_gain.json").write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
