"""What each objective's pretraining is worth at the same wall-clock budget.

Every registered self-supervised objective (``supervised`` only when named in
--objectives) pretrains the same encoder (the default run's, Ti/4 cut to 4
blocks with mean pooling, unless --model / --image-size / --set say otherwise)
on each labelled spec's training images for the same number of training
seconds (--budget-s), with its own defaults otherwise.

How the budget is kept: a throwaway timing pass runs a few of the objective's
real training steps and takes the median seconds per step; the run is then
built with ``train.steps = budget / seconds-per-step`` (so its warm-up and
cosine schedule finish at the budget, as a user who planned the run would set
it) and is also stopped when its training seconds reach the budget, whichever
comes first. Training seconds are the loop's own ``train_time`` (data loading
included; evaluation pauses and the timing pass excluded). Every
--curve-every-s training seconds a k-NN probe (k = 20) and the ridge linear
probe score the encoder so far on a small subset (each point: training seconds,
k-NN, linear, steps done, so objectives also compare at equal steps when the
machine's speed changed during the invocation); the curves are drawn one line
per objective.

The headline is time to quality (benchmarks/time_to_quality.py): for each
objective, the training seconds at which its curve's k-NN, and its linear probe,
first reach the --reference objective's final curve value (``mae`` by default),
and the reference's own seconds over those (the speed-up, > 1 is faster); the
curve figure marks those points. One invocation trains both sides on the same
machine state.

``--steps N`` trains every objective for N steps instead (no timing pass, no
budget stop): rows then compare the objectives at equal steps and do not
depend on the machine's load, which a wall-clock budget does.

Scoring, the same for every encoder (the exported one, the same architecture
at random initialisation, and the raw pixels), on seeded, class-balanced
subsets so a 60,000-image set stays affordable (sizes are flags):

- few-shot: closed-form ridge (few-shot evaluator), 10 and 25 per class drawn
  from --probe-train held-out training images, 3 seeds, on --probe-test images;
- k-NN: weighted k-NN, k = 20 (knn evaluator), on --linear-train images;
- linear: the closed-form ridge on the --linear-train images, its λ chosen on a
  20 % validation split of them (linear-probe evaluator, ``optimizer=ridge``: a
  fixed λ would favour one feature width over another); ``--linear probe`` uses
  the SGD linear-probe evaluator instead;
- fine-tune: the run summary's ``finetune`` entry (10 labelled images per
  class, 3 draws; ``--set summary_eval.evaluators.finetune.options.steps=...``), and its
  gain over random initialisation (not defined for raw pixels).

Writes ``results.json``, ``results.md``, ``results.png`` (bar chart) and
``curve.png`` (k-NN and linear top-1 against training seconds, time to quality
marked) under --out. ``--rescore``
scores the runs an earlier invocation left under --out again (each one's newest
checkpoint, training record and curve kept) without training: a changed probe
costs minutes, not the budget again.

    python benchmarks/ssl_quality.py --data builtin:fashion-mnist --image-size 28 --budget-s 120
    python benchmarks/ssl_quality.py --data builtin:digits --objectives mae,dino
    python benchmarks/ssl_quality.py --objectives "mae,data2vec2,data2vec2 cls_weight=0"
    python benchmarks/ssl_quality.py --data builtin:fashion-mnist --image-size 28 --steps 500
    python benchmarks/ssl_quality.py --data builtin:fashion-mnist --image-size 28 --rescore
    python benchmarks/ssl_quality.py --quick               # a CI-sized smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: sleep, do not spin

import numpy as np  # noqa: E402
import time_to_quality  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from vitssl.config import Config, load_config, normalisation  # noqa: E402
from vitssl.data.tasks import Task, load_task  # noqa: E402
from vitssl.plugins import get_registry  # noqa: E402
from vitssl.train import distributed  # noqa: E402
from vitssl.train.build import build_run  # noqa: E402
from vitssl.train.checkpoint import load_encoder  # noqa: E402
from vitssl.train.run import exported_encoder, run_steps, save_run_checkpoint  # noqa: E402
from vitssl.train.summary import (  # noqa: E402
    RawPixels,
    compare,
    low_data_split,
    random_init_encoder,
)

NEVER = 10 ** 9
COLUMNS = {"fewshot_10shot_top1": "10-shot", "fewshot_25shot_top1": "25-shot",
           "knn_k20_top1": "k-NN", "linear_top1": "linear", "finetune_top1": "fine-tune",
           "finetune_gain": "FT gain"}


def default_objectives(with_supervised: bool = False) -> list[str]:
    """Every registered objective, ``supervised`` (it reads the labels) only when asked."""
    names = sorted(get_registry().names("objectives"))
    return [n for n in names if with_supervised or n != "supervised"]


def variant(entry: str) -> tuple[str, list[str]]:
    """An --objectives entry ``NAME [KEY=VALUE ...]`` -> (objective, config overrides); a
    key without a dot is the objective's own (``objective.options.KEY``)."""
    name, *sets = entry.split()
    return name, [s if "." in s.split("=")[0] else f"objective.options.{s}" for s in sets]


def run_name(entry: str) -> str:
    """A folder name for an --objectives entry and a data spec."""
    return "-".join(entry.replace(":", "-").replace("/", "-").replace("=", "-").split())


def _config(entry: str, spec: str, args: argparse.Namespace, steps: int,
            out: str) -> Config:
    objective, own = variant(entry)
    sets = [f"objective.name={objective}", f"data.spec={spec}", f"train.steps={steps}",
            f"train.batch_size={args.batch_size}", f"train.checkpoint_every={NEVER}",
            "summary_eval.enabled=false", f"out={out}", f"summary_eval.data={spec}"]
    if args.model:
        sets.append(f"model.name={args.model}")
    if args.image_size:
        sets.append(f"model.image_size={args.image_size}")
    if args.quick:
        sets += ["model.depth=1", "summary_eval.evaluators.finetune.options.steps=3",
                 "summary_eval.evaluators.finetune.draws=1"]
    return load_config(None, sets + list(args.set) + own)


def subset_task(task: Task, train_per_class: int, test_n: int, seed: int = 0) -> Task:
    """``task`` cut to ``train_per_class`` training images of each class and ``test_n`` tests."""
    small = low_data_split(task, train_per_class, seed)
    rng = np.random.default_rng(seed + 1)
    test = rng.permutation(len(task.test))[:test_n]
    return Task(name=task.name, train=small.train, test=Subset(task.test, sorted(test.tolist())),
                num_classes=task.num_classes)


class Scorer:
    """The fixed evaluation protocol of one labelled spec (subsets drawn once)."""

    def __init__(self, cfg: Config, args: argparse.Namespace) -> None:
        task = load_task(cfg.data.spec, image_size=cfg.model.image_size,
                         mean=normalisation(cfg.data)[0], std=normalisation(cfg.data)[1],
                         options=cfg.data.options)
        k = task.num_classes
        self.probe = subset_task(task, args.probe_train // k, args.probe_test)
        self.linear = subset_task(task, args.linear_train // k, args.probe_test)
        self.curve = subset_task(task, args.curve_train // k, args.curve_test, seed=2)
        self.linear_kind = args.linear
        self.seeds = 1 if args.quick else 3
        self.finetune = cfg.summary_eval.evaluators.get("finetune")  # null: no fine-tune column
        self.registry = get_registry()

    def curve_point(self, encoder: nn.Module) -> list[float]:
        """[k-NN (k = 20) top-1, ridge linear top-1] on the curve subset."""
        knn = self.registry.get("evaluators", "knn")(k=[20], progress=False)
        linear = self.registry.get("evaluators", "linear-probe")(optimizer="ridge",
                                                                  progress=False)
        return [float(knn.run(encoder, self.curve)["knn_k20_top1"]),
                float(linear.run(encoder, self.curve)["linear_probe_top1"])]

    def score(self, encoder: nn.Module, with_finetune: bool) -> dict[str, float]:
        """Few-shot 10/25, k-NN, linear and (optionally) fine-tune top-1 (%)."""
        get = self.registry.get
        scores = get("evaluators", "few-shot")(shots=[10, 25], seeds=self.seeds,
                                               progress=False).run(encoder, self.probe)
        scores.update(get("evaluators", "knn")(k=[20], progress=False).run(encoder, self.linear))
        optimizer = "sgd" if self.linear_kind == "probe" else "ridge"
        scores["linear_top1"] = get("evaluators", "linear-probe")(
            optimizer=optimizer, progress=False).run(encoder, self.linear)["linear_probe_top1"]
        if with_finetune and self.finetune is not None:
            scores["finetune_top1"] = compare("finetune", self.finetune, {"e": encoder},
                                              self.probe)["e"]["finetune_top1"]
        return {k: float(v) for k, v in scores.items() if k in COLUMNS}


def seconds_per_step(cfg: Config, ctx: distributed.Context, steps: int) -> float:
    """Median seconds of the objective's training step after two warm-up steps (throwaway run).

    The median, not the mean: on shared cores one slow step would shorten the plan.
    """
    with tempfile.TemporaryDirectory(prefix="vitssl-timing-") as out:
        run = build_run(_replace_steps(cfg, NEVER, out), ctx)
        try:
            times, before = [], 0.0
            for done in run_steps(run, 0, 2 + steps):
                if done > 2:
                    times.append(run.train_time - before)
                before = run.train_time
            return float(np.median(times))
        finally:
            run.log.close()


def _replace_steps(cfg: Config, steps: int, out: str | None) -> Config:
    return dataclasses.replace(cfg, out=out,
                               train=dataclasses.replace(cfg.train, steps=steps))


def train_for_budget(cfg: Config, ctx: distributed.Context, args: argparse.Namespace,
                     scorer: Scorer) -> tuple[nn.Module, dict[str, Any]]:
    """Pretrain for ``args.budget_s`` training seconds (or ``args.steps`` steps); the
    encoder and the run's record."""
    if args.steps:
        per_step, planned, budget = None, args.steps, float("inf")
    else:
        per_step = seconds_per_step(cfg, ctx, args.timing_steps)
        planned, budget = max(args.timing_steps, int(args.budget_s / per_step)), args.budget_s
    cfg = _replace_steps(cfg, planned, cfg.out)
    run = build_run(cfg, ctx)
    curve = [[0.0, *scorer.curve_point(exported_encoder(run)), 0]]
    next_point, done = args.curve_every_s, 0
    try:
        for done in run_steps(run, 0, planned):
            over = run.train_time >= budget
            if run.train_time >= next_point or over or done == planned:
                curve.append([run.train_time, *scorer.curve_point(exported_encoder(run)),
                              done])
                run.objective.train()
                while next_point <= run.train_time:
                    next_point += args.curve_every_s
            if over:
                break
        if not run.cadence.saves(done):  # stopped by the budget
            save_run_checkpoint(run, done)
    finally:
        run.log.close()
    record = {"planned_steps": planned, "steps": done, "timing_s_per_step": per_step,
              "train_s": run.train_time, "curve": curve}
    return exported_encoder(run).eval(), record


def earlier_run(run_dir: Path, task: dict[str, Any] | None, objective: str,
                cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    """The exported encoder of a run an earlier invocation trained, and its training record."""
    if task is None or objective not in task["rows"] or not run_dir.is_dir():
        raise SystemExit(f"--rescore: no earlier run of '{objective}' under {run_dir.parent}")
    encoder, trained = load_encoder(run_dir)
    if (trained.model.name, trained.model.image_size) != (cfg.model.name, cfg.model.image_size):
        raise SystemExit(f"--rescore: {run_dir} trained {trained.model.name} at "
                         f"{trained.model.image_size} px; pass the same --model / --image-size")
    record = {key: value for key, value in task["rows"][objective].items()
              if key not in COLUMNS}
    return encoder, {**record, "curve": task["curves"][objective]}


def earlier_objectives(results: dict[str, Any]) -> list[str]:
    """The objectives an earlier invocation trained (its first task's rows)."""
    rows = next(iter(results["tasks"].values()))["rows"]
    return [name for name in rows if name not in ("random init", "raw pixels")]


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    previous = json.loads((out / "results.json").read_text()) if args.rescore else {}
    objectives = (args.objectives.split(",") if args.objectives
                  else earlier_objectives(previous) if previous else default_objectives())
    results: dict[str, Any] = {"budget_s": None if args.steps else args.budget_s,
                               "steps": args.steps or None, "batch_size": args.batch_size,
                               "tasks": {}}
    if previous:
        results.update({key: previous[key] for key in ("budget_s", "steps", "batch_size")})
    for spec in args.data.split(","):
        base = _config(objectives[0], spec, args, NEVER, str(out / "runs"))
        ctx = distributed.setup(base.train.device)
        scorer = Scorer(base, args)
        rows: dict[str, Any] = {}
        curves: dict[str, Any] = {}
        for objective in objectives:
            run_dir = out / "runs" / run_name(f"{spec} {objective}")
            cfg = _config(objective, spec, args, NEVER, str(run_dir))
            t0 = time.perf_counter()
            if args.rescore:
                encoder, record = earlier_run(run_dir, previous["tasks"].get(spec), objective,
                                              cfg)
            else:
                encoder, record = train_for_budget(cfg, ctx, args, scorer)
                record["wall_s"] = time.perf_counter() - t0
            curves[objective] = record.pop("curve")
            rows[objective] = {**scorer.score(encoder, with_finetune=True), **record}
            print(f"{spec} {objective}: {rows[objective]}", flush=True)
        random_init = random_init_encoder(base).eval()
        random = {**scorer.score(random_init, with_finetune=True),
                  **dict(zip(("curve_knn", "curve_linear"), scorer.curve_point(random_init),
                             strict=True))}
        if scorer.finetune is not None:
            for name in objectives:
                rows[name]["finetune_gain"] = (rows[name]["finetune_top1"]
                                               - random["finetune_top1"])
        rows["random init"] = random
        rows["raw pixels"] = {**scorer.score(RawPixels(), with_finetune=False),
                              **dict(zip(("curve_knn", "curve_linear"),
                                         scorer.curve_point(RawPixels()), strict=True))}
        results["tasks"][spec] = {"rows": rows, "curves": curves,
                                  "time_to_quality": time_to_quality.time_to_quality(
                                      curves, args.reference),
                                  "model": f"{base.model.name} depth {base.model.depth} at "
                                           f"{base.model.image_size} px"}
        distributed.teardown(ctx)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for spec, entry in results["tasks"].items():
        rows = entry["rows"]
        metrics = [m for m in COLUMNS if any(m in row for row in rows.values())]
        per = (f"{results['steps']} steps" if results.get("steps")
               else f"{results['budget_s']:g} training s")
        lines += [f"**{spec}** ({entry['model']}, {per} per objective, batch "
                  f"{results['batch_size']}; top-1 %)", "",
                  "| encoder | " + " | ".join(COLUMNS[m] for m in metrics)
                  + " | steps | train s |", "|---" * (len(metrics) + 3) + "|"]
        for name, row in rows.items():
            cells = [(f"{row[m]:+.1f}" if m == "finetune_gain" else f"{row[m]:.1f}")
                     if m in row else "–" for m in metrics]
            steps = f"{row['steps']}/{row['planned_steps']}" if "steps" in row else "–"
            train = f"{row['train_s']:.0f}" if "train_s" in row else "–"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {steps} | {train} |")
        lines.append("")
        lines += time_to_quality.markdown(entry.get("time_to_quality") or {},
                                          {n: r["train_s"] for n, r in rows.items()
                                           if "train_s" in r})
    lines.append("steps: done / planned" + ("." if results.get("steps")
                                           else " from the timing pass."))
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart(results: dict[str, Any], path: Path) -> None:
    """Bars of 10-shot, k-NN, linear and fine-tune top-1 per encoder, one panel per spec."""
    plt = _pyplot()
    specs = list(results["tasks"])
    fig, axes = plt.subplots(1, len(specs), figsize=(7 * len(specs), 4), squeeze=False)
    for ax, spec in zip(axes[0], specs, strict=True):
        rows = results["tasks"][spec]["rows"]
        metrics = [m for m in ("fewshot_10shot_top1", "knn_k20_top1", "linear_top1",
                               "finetune_top1") if any(m in row for row in rows.values())]
        width = 0.8 / max(1, len(metrics))
        for i, metric in enumerate(metrics):
            values = [rows[name].get(metric, 0.0) for name in rows]
            ax.bar([x + i * width for x in range(len(rows))], values, width,
                   label=COLUMNS[metric])
        ax.set_xticks([x + width * (len(metrics) - 1) / 2 for x in range(len(rows))])
        ax.set_xticklabels(list(rows), rotation=20)
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
        ax.set_title(spec)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curve_chart(results: dict[str, Any], path: Path) -> None:
    """k-NN and linear top-1 against training seconds, one line per objective, one row of
    panels per spec; each objective's first reach of the reference's final value marked."""
    plt = _pyplot()
    specs = list(results["tasks"])
    fig, axes = plt.subplots(len(specs), 2, figsize=(12, 4 * len(specs)), squeeze=False)
    for row, spec in zip(axes, specs, strict=True):
        entry = results["tasks"][spec]
        for ax, (probe, index) in zip(row, time_to_quality.PROBES.items(), strict=True):
            colours = {}
            for objective, points in entry["curves"].items():
                kept = [p for p in points if len(p) > index]
                if kept:
                    line, = ax.plot([p[0] for p in kept], [p[index] for p in kept],
                                    marker="o", markersize=3, label=objective)
                    colours[objective] = line.get_color()
            for name, style in (("raw pixels", ":"), ("random init", "--")):
                if f"curve_{probe}" in entry["rows"].get(name, {}):
                    ax.axhline(entry["rows"][name][f"curve_{probe}"], color="grey",
                               linestyle=style, label=name)
            time_to_quality.mark(ax, entry.get("time_to_quality") or {}, probe, colours)
            ax.set_xlabel("training seconds")
            ax.set_ylabel(f"{'k-NN (k = 20)' if probe == 'knn' else 'linear (ridge)'} "
                          f"top-1 (%)")
            ax.set_title(f"{spec}: {entry['model']}", fontsize=9)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", default="",
                        help="comma-separated, each NAME [KEY=VALUE ...] (a variant: "
                             "'data2vec2 cls_weight=0'); default: every registered one "
                             "but supervised")
    parser.add_argument("--data", "--tasks", dest="data", default="builtin:digits",
                        help="labelled data specs, comma-separated (--tasks: the older name)")
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="training seconds per objective")
    parser.add_argument("--steps", type=int, default=0,
                        help="train every objective for this many steps instead of --budget-s")
    parser.add_argument("--curve-every-s", type=float, default=30.0,
                        help="training seconds between k-NN curve points")
    parser.add_argument("--model", help="variant/patch size, e.g. Ti/4 (default: the run's)")
    parser.add_argument("--image-size", type=int, help="input resolution in pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--timing-steps", type=int, default=8,
                        help="steps of the timing pass that sets train.steps")
    parser.add_argument("--probe-train", type=int, default=3000,
                        help="held-out training images the few-shot sets are drawn from")
    parser.add_argument("--linear-train", type=int, default=1000,
                        help="training images of the k-NN and linear probes")
    parser.add_argument("--probe-test", type=int, default=2000, help="test images scored")
    parser.add_argument("--curve-train", type=int, default=1000)
    parser.add_argument("--curve-test", type=int, default=1000)
    parser.add_argument("--linear", choices=("ridge", "probe"), default="ridge",
                        help="ridge: closed form, λ chosen on validation; probe: SGD sweep")
    parser.add_argument("--rescore", action="store_true",
                        help="score the runs already under --out again, without training")
    parser.add_argument("--reference", default="mae",
                        help="the objective whose final quality the others race to")
    parser.add_argument("--out", default="ssl-quality")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. model.depth=2")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 block, a few seconds each, tiny probes, one seed")
    args = parser.parse_args()
    if args.quick:
        args.budget_s, args.curve_every_s = min(args.budget_s, 2.0), min(args.curve_every_s, 1.0)
        args.batch_size, args.timing_steps = min(args.batch_size, 8), min(args.timing_steps, 2)
        args.probe_train, args.linear_train, args.probe_test = 300, 200, 100
        args.curve_train, args.curve_test = 100, 100
    if args.steps < 0:
        parser.error(f"--steps must be >= 1 (or 0 for the --budget-s mode), got {args.steps}")
    torch.manual_seed(0)
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "results.md").write_text(table)
    chart(results, out / "results.png")
    curve_chart(results, out / "curve.png")
    print(table)


if __name__ == "__main__":
    main()
