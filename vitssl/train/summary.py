"""The end-of-run summary: what pretraining bought, in the paper's terms.

On the summary task (``summary_eval.data``):

- fine-tuning (paper §4.6 reports masked-patch pretraining this way): the
  ``finetune`` evaluator's recipe on a low-data split (``finetune_per_class``
  labelled images per class, drawn per seed), from the pretrained encoder and
  from the same architecture at its random initialisation — identical data,
  steps and seeds — scored on the whole test split, averaged over seeds;
- few-shot (big_vision's closed-form ridge) on frozen features
  (``summary_eval.features``) of both encoders, with the raw pixels at the
  same resolution as a reference row.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from vitssl.config import Config
from vitssl.data.tasks import Task, load_task
from vitssl.models import build_encoder
from vitssl.plugins import get_registry


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
    inner = getattr(dataset, "dataset", dataset)
    if hasattr(inner, "labels"):
        return np.asarray(inner.labels)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


def low_data_split(task: Task, per_class: int, seed: int) -> Task:
    """``task`` with a training split of ``per_class`` random images of each class."""
    labels = _labels(task.train)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                           for c in range(task.num_classes)])
    return Task(name=f"{task.name} ({per_class}/class)", train=Subset(task.train, keep.tolist()),
                test=task.test, num_classes=task.num_classes)


def finetune_comparison(encoders: dict[str, nn.Module], task: Task, cfg: Config,
                        progress: bool = False) -> dict[str, float]:
    """Mean fine-tune top-1 per encoder over ``summary_eval.finetune_seeds`` low-data draws."""
    sc = cfg.summary_eval
    factory = get_registry().get("evaluators", "finetune")
    scores: dict[str, list[float]] = {name: [] for name in encoders}
    for seed in range(sc.finetune_seeds):
        split = low_data_split(task, sc.finetune_per_class, seed)
        evaluator = factory(steps=sc.finetune_steps, batch_size=sc.finetune_batch_size,
                            seed=seed, progress=progress)
        for name, encoder in encoders.items():
            scores[name].append(evaluator.run(encoder, split)["finetune_top1"])
    return {name: float(np.mean(values)) for name, values in scores.items()}


def summary_evaluation(encoder: nn.Module, cfg: Config, device: torch.device,
                       progress: bool = False) -> dict[str, Any]:
    """Fine-tune and few-shot top-1 of the pretrained encoder, random init and raw pixels."""
    sc = cfg.summary_eval
    task = load_task(sc.data, image_size=cfg.model.image_size, mean=tuple(cfg.data.mean),
                     std=tuple(cfg.data.std))
    encoders = {"pretrained": copy.deepcopy(encoder).to(device).eval(),
                "random_init": random_init_encoder(cfg).to(device).eval()}
    out: dict[str, Any] = {"data": sc.data, "features": sc.features}
    if sc.finetune_steps > 0:
        out["finetune"] = {"per_class": sc.finetune_per_class, "steps": sc.finetune_steps,
                           "seeds": sc.finetune_seeds,
                           **finetune_comparison(encoders, task, cfg, progress)}
    few_shot = get_registry().get("evaluators", "few-shot")
    evaluator = few_shot(shots=list(sc.shots), seeds=sc.seeds, progress=progress,
                         features=sc.features)
    out["few_shot"] = {name: evaluator.run(model, task) for name, model in encoders.items()}
    pixels = few_shot(shots=list(sc.shots), seeds=sc.seeds, progress=progress)
    out["few_shot"]["raw_pixels"] = pixels.run(RawPixels(), task)
    return out


def _shot_label(key: str) -> str:
    return key.removeprefix("fewshot_").removesuffix("_top1")


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
    ev = summary.get("evaluation")
    if not ev:
        return "\n".join(lines)
    ft = ev.get("finetune")
    if ft:
        gain = ft["pretrained"] - ft["random_init"]
        lines += [f"fine-tune top-1 on {ev['data']}, {ft['per_class']} labelled images per "
                  f"class, {ft['steps']} steps, mean of {ft['seeds']} draws (%)",
                  f"  pretrained {ft['pretrained']:.2f}   random init {ft['random_init']:.2f}"
                  f"   gain {gain:+.2f}"]
    few = ev["few_shot"]
    lines.append(f"few-shot top-1 on {ev['data']}, features={ev['features']} (%)"
                 f"   pretrained   random init   raw pixels")
    for key, value in few["pretrained"].items():
        if not key.endswith("_top1"):
            continue
        base = few["random_init"].get(key, float("nan"))
        raw = few["raw_pixels"].get(key, float("nan"))
        lines.append(f"  {_shot_label(key):<44} {value:10.2f}   {base:11.2f}   {raw:10.2f}")
    return "\n".join(lines)
