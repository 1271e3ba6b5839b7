"""The end-of-run summary: what pretraining bought, in the paper's terms.

``summary_eval.evaluators`` maps registered evaluators to entries ``{compare,
per_class, draws, options}`` (docs/evaluation.md, "The run summary").
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from vitssl.config import SUMMARY_ENTRY_KEYS, Config
from vitssl.data.source import parse_spec
from vitssl.data.tasks import Task, capped, run_task
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.plugins import get_registry

ENCODERS = ("pretrained", "random_init", "raw_pixels")


def random_init_encoder(cfg: Config) -> nn.Module:
    """The same architecture at the initialisation the run started from (same seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_encoder(cfg.model)


class RawPixels(nn.Module):
    """The reference "encoder": an image's normalised pixels, flattened."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def _labels(dataset: Dataset) -> np.ndarray:
    """Every item's label, read from the dataset (or what it wraps) without decoding images."""
    if isinstance(dataset, Subset):
        return _labels(dataset.dataset)[np.asarray(dataset.indices)]
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels)
    inner = getattr(dataset, "dataset", None)
    if inner is not None and len(inner) == len(dataset):
        return _labels(inner)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


def check_entries(evaluators: dict[str, Any]) -> None:
    """Refuse, in one line, a summary entry with unknown keys or encoders to compare."""
    for name, entry in evaluators.items():
        if entry is None:
            continue
        extra = sorted(set(entry) - set(SUMMARY_ENTRY_KEYS)) if isinstance(entry, dict) else entry
        if not isinstance(entry, dict) or extra:
            raise VitsslError(f"summary_eval.evaluators.{name}: unknown {extra}; accepted: "
                              f"{', '.join(SUMMARY_ENTRY_KEYS)} (the evaluator's own go in "
                              f"options)")
        unknown = sorted(set(entry.get("compare", ENCODERS[:2])) - set(ENCODERS))
        if unknown:
            raise VitsslError(f"summary_eval.evaluators.{name}.compare: unknown {unknown}; "
                              f"accepted: {', '.join(ENCODERS)}")


def low_data_split(task: Task, per_class: int, seed: int) -> Task:
    """``task`` with a training split of ``per_class`` random images of each class."""
    labels = _labels(task.train)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                           for c in range(task.num_classes)])
    return Task(name=f"{task.name} ({per_class}/class)", train=Subset(task.train, keep.tolist()),
                test=task.test, num_classes=task.num_classes)


def _task(data: str, cfg: Config) -> Task:
    """The summary's task; the pretraining data's ``data.options`` go with its own spec."""
    options = cfg.data.options if data == cfg.data.spec else {}
    task = run_task(data, cfg.model.image_size, cfg.data, cfg.model.in_chans, options=options)
    return capped(task, cfg.summary_eval.max_train, cfg.summary_eval.max_test)


def compare(name: str, entry: dict[str, Any], encoders: dict[str, nn.Module], task: Task,
            progress: bool = False) -> dict[str, dict[str, float]]:
    """``{encoder: {metric: value}}`` of evaluator ``name`` (means over the draws)."""
    factory = get_registry().get("evaluators", name)
    options = {"progress": progress, **(entry.get("options") or {})}
    draws = int(entry.get("draws", 1)) if entry.get("per_class") else 0
    scores: dict[str, list[dict[str, float]]] = {e: [] for e in encoders}
    for seed in range(draws) if draws else [None]:
        split = task if seed is None else low_data_split(task, int(entry["per_class"]), seed)
        seeded = options if seed is None else {**options, "seed": seed}
        for encoder_name, encoder in encoders.items():
            # the raw pixels are not a ViT: they have no feature choice
            used = {k: v for k, v in seeded.items()
                    if k != "features" or encoder_name != "raw_pixels"}
            scores[encoder_name].append(factory(**used).run(encoder, split))
    return {e: {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            for e, runs in scores.items()}


def summary_task(cfg: Config) -> tuple[str, Task] | None:
    """(spec, task) the summary scores on: ``summary_eval.data``, else the pretraining data if
    labelled, else digits if the encoder reads them; None (said on stderr) when none fits."""
    labelled = cfg.summary_eval.data or (None if parse_spec(cfg.data.spec).source.streams
                                         else cfg.data.spec)
    if labelled is not None:
        try:
            return labelled, _task(labelled, cfg)
        except VitsslError as exc:
            if cfg.summary_eval.data:
                raise
            print(f"note: the summary evaluates on builtin:digits ({exc})", file=sys.stderr)
    try:
        return "builtin:digits", _task("builtin:digits", cfg)
    except VitsslError as exc:
        print(f"note: no summary evaluation ({exc}); set summary_eval.data to labelled data "
              f"like the training data", file=sys.stderr)
        return None


def summary_evaluation(encoder: nn.Module, cfg: Config, device: torch.device,
                       progress: bool = False) -> dict[str, Any]:
    """Each configured evaluator's scores of the pretrained encoder and its references on
    :func:`summary_task`'s data (``{"data": None}`` when none fits the encoder)."""
    chosen = summary_task(cfg)
    if chosen is None:
        return {"data": None}
    data, task = chosen
    built = {"pretrained": lambda: copy.deepcopy(encoder).to(device).eval(),
             "random_init": lambda: random_init_encoder(cfg).to(device).eval(),
             "raw_pixels": RawPixels}
    out: dict[str, Any] = {"data": data}
    check_entries(cfg.summary_eval.evaluators)
    for name, entry in cfg.summary_eval.evaluators.items():
        if entry is None:
            continue
        wanted = list(entry.get("compare", ENCODERS[:2]))
        try:
            scores = compare(name, entry, {e: built[e]() for e in wanted}, task, progress)
        except VitsslError as exc:
            print(f"warning: summary evaluator '{name}' skipped: {exc}", file=sys.stderr)
            continue
        settings = {k: entry[k] for k in ("per_class", "draws") if k in entry}
        out[name] = {"settings": settings, **scores}
    return out


HEALTH_KEYS = ("rankme", "rankme_ratio", "feature_std", "feature_cos")


def last_health(records: list[dict[str, Any]]) -> dict[str, float]:
    """The newest value of each monitor metric (health and probe) among step records."""
    out: dict[str, float] = {}
    for record in records:
        out.update({k: v for k, v in record.items()
                    if k in HEALTH_KEYS or k.startswith("probe_")})
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the terminal."""
    lines = [f"run directory        {summary['run_dir']}",
             f"steps                {summary['steps']}",
             f"final loss           {summary['final_loss']:.4f} (mean of the last "
             f"{summary['final_window']} steps)"]
    for key, value in summary.get("final_metrics", {}).items():
        lines.append(f"{key:<20} {value:.4f}")
    lines += [f"images/s             {summary['images_per_s']:.1f}",
              f"skipped samples      {summary['skipped']}",
              f"training time        {summary['train_s']:.1f} s"]
    monitor = summary.get("monitor")
    if monitor:
        health = "  ".join(f"{k} {v:.4g}" for k, v in monitor.items()
                           if k not in ("seconds", "alarms"))
        lines.append(f"monitor (last check)  {health}")
        lines.append(f"monitor time         {monitor['seconds']:.1f} s; alarms: "
                     f"{', '.join(monitor['alarms']) or 'none'}")
    evaluation = summary.get("evaluation") or {}
    for name, result in evaluation.items():
        if name == "data":
            continue
        encoders = [e for e in ENCODERS if e in result]
        gain = {"pretrained", "random_init"} <= set(encoders)
        settings = result.get("settings", {})
        low_data = f", {settings['per_class']} labelled images per class, mean of " \
            f"{settings.get('draws', 1)} draws" if "per_class" in settings else ""
        lines.append(f"{name} top-1 on {evaluation['data']}{low_data} (%)")
        lines.append(f"  {'':<28}" + "".join(f"{e.replace('_', ' '):>13}" for e in encoders)
                     + (f"{'gain':>9}" if gain else ""))
        for metric, value in result[encoders[0]].items():
            if not metric.endswith("_top1"):
                continue
            row = "".join(f"{result[e].get(metric, float('nan')):13.2f}" for e in encoders)
            if gain:
                row += f"{value - result['random_init'][metric]:+9.2f}"
            lines.append(f"  {metric.removesuffix('_top1'):<28}{row}")
    return "\n".join(lines)
