"""What each objective's pretraining is worth: objectives x evaluators x embedded tasks.

Every objective pretrains the same encoder (the default run's: Ti/4 cut to 4
blocks, mean pooling, 16 px) on each task's training images for the same
number of steps and batch size, with its own defaults otherwise. Each exported
encoder — and the same architecture at random initialisation, and the raw
pixels — is then scored with the same protocols:

- few-shot: big_vision's closed-form ridge, 5/10/25 shots, 3 seeds;
- k-NN: weighted k-NN (k = 20) on L2-normalised features, all training images;
- fine-tune: the paper's recipe on 10 labelled images per class, 3 draws
  (the run summary's comparison; not defined for raw pixels).

The supervised objective uses the labels: it is a reference, not a
self-supervised result. Writes ``results.json``, ``results.md`` and
``results.png`` (a chart of 10-shot, k-NN and fine-tune top-1) under --out.

    python benchmarks/ssl_quality.py                       # all objectives on digits
    python benchmarks/ssl_quality.py --tasks builtin:digits,builtin:dsprites-ori
    python benchmarks/ssl_quality.py --quick               # a CI-sized smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: sleep, do not spin

import torch  # noqa: E402
from torch import nn  # noqa: E402

from vitssl.config import Config, load_config  # noqa: E402
from vitssl.data.tasks import load_task  # noqa: E402
from vitssl.plugins import get_registry  # noqa: E402
from vitssl.train.checkpoint import load_encoder  # noqa: E402
from vitssl.train.run import pretrain  # noqa: E402
from vitssl.train.summary import RawPixels, finetune_comparison, random_init_encoder  # noqa: E402

OBJECTIVES = ("masked-patch", "mae", "dino", "supervised")


def _config(objective: str, task: str, args: argparse.Namespace, out: Path) -> Config:
    sets = [f"objective.name={objective}", f"data.spec={task}", f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}", "summary_eval.enabled=false", f"out={out}",
            f"summary_eval.data={task}", *args.set]
    if args.quick:
        sets += ["model.depth=1", "summary_eval.finetune_steps=3", "summary_eval.seeds=1",
                 "summary_eval.finetune_seeds=1", "summary_eval.shots=[2]"]
    return load_config(None, sets)


def evaluate(encoder: nn.Module, cfg: Config, with_finetune: bool) -> dict[str, float]:
    """Few-shot, k-NN and (optionally) low-data fine-tune top-1 of one encoder."""
    sc = cfg.summary_eval
    task = load_task(sc.data, image_size=cfg.model.image_size)
    registry = get_registry()
    scores = registry.get("evaluators", "few-shot")(
        shots=list(sc.shots), seeds=sc.seeds, progress=False).run(encoder, task)
    scores.update(registry.get("evaluators", "knn")(k=[20], progress=False).run(encoder, task))
    if with_finetune:
        scores["finetune_top1"] = finetune_comparison({"e": encoder}, task, cfg)["e"]
    return {k: float(v) for k, v in scores.items() if k.endswith("_top1")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    results: dict[str, Any] = {"steps": args.steps, "batch_size": args.batch_size, "tasks": {}}
    for task in args.tasks.split(","):
        rows: dict[str, Any] = {}
        cfg = None
        for objective in args.objectives.split(","):
            run_dir = out / "runs" / f"{task.replace(':', '-')}-{objective}"
            cfg = _config(objective, task, args, run_dir)
            t0 = time.perf_counter()
            summary = pretrain(cfg)
            encoder, _ = load_encoder(run_dir)
            rows[objective] = {**evaluate(encoder, cfg, with_finetune=True),
                               "train_s": summary["train_s"],
                               "wall_s": time.perf_counter() - t0}
            print(f"{task} {objective}: {rows[objective]}", flush=True)
        assert cfg is not None
        rows["random init"] = evaluate(random_init_encoder(cfg).eval(), cfg, with_finetune=True)
        rows["raw pixels"] = evaluate(RawPixels(), cfg, with_finetune=False)
        results["tasks"][task] = rows
    return results


def _column_order(metric: str) -> tuple:
    """Few-shot columns by shot count, then the rest by name."""
    shots = metric.removeprefix("fewshot_").split("shot")[0]
    return (0, int(shots), "") if metric.startswith("fewshot_") else (1, 0, metric)


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for task, rows in results["tasks"].items():
        metrics = sorted({k for row in rows.values() for k in row if k.endswith("_top1")},
                         key=_column_order)
        names = [m.removesuffix("_top1").replace("fewshot_", "") for m in metrics]
        lines += [f"**{task}** ({results['steps']} steps of {results['batch_size']}; top-1 %)",
                  "", "| encoder | " + " | ".join(names) + " | train s |",
                  "|---" * (len(names) + 2) + "|"]
        for name, row in rows.items():
            cells = [f"{row[m]:.1f}" if m in row else "–" for m in metrics]
            train = f"{row['train_s']:.0f}" if "train_s" in row else "–"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {train} |")
        lines.append("")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = results["tasks"][task]
        metrics = [m for m in ("fewshot_10shot_top1", "knn_k20_top1", "finetune_top1")
                   if any(m in row for row in rows.values())]
        width = 0.8 / max(1, len(metrics))
        for i, metric in enumerate(metrics):
            values = [rows[name].get(metric, 0.0) for name in rows]
            ax.bar([x + i * width for x in range(len(rows))], values, width, label=metric)
        ax.set_xticks([x + width * (len(metrics) - 1) / 2 for x in range(len(rows))])
        ax.set_xticklabels(list(rows), rotation=20)
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--tasks", default="builtin:digits")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="ssl-quality")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. model.depth=2")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 block, few steps, one seed")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch_size = min(args.steps, 3), min(args.batch_size, 8)
    torch.manual_seed(0)
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "results.md").write_text(table)
    chart(results, out / "results.png")
    print(table)


if __name__ == "__main__":
    main()
