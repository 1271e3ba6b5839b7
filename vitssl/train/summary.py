"""The end-of-run summary: training figures and few-shot accuracy vs random init."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from vitssl.config import Config
from vitssl.data.tasks import load_task
from vitssl.models import build_encoder
from vitssl.plugins import get_registry


def random_init_encoder(cfg: Config) -> nn.Module:
    """The same architecture at the initialisation the run started from (same seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_encoder(cfg.model)


def few_shot_comparison(encoder: nn.Module, cfg: Config, device: torch.device,
                        progress: bool = False) -> dict[str, dict[str, float]]:
    """Few-shot top-1 of the pretrained encoder and of a randomly initialised twin."""
    sc = cfg.summary_eval
    evaluator = get_registry().get("evaluators", "few-shot")(
        shots=list(sc.shots), seeds=sc.seeds, progress=progress)
    task = load_task(sc.data, image_size=cfg.model.image_size, mean=tuple(cfg.data.mean),
                     std=tuple(cfg.data.std))
    pretrained = copy.deepcopy(encoder).to(device).eval()
    baseline = random_init_encoder(cfg).to(device).eval()
    return {"data": sc.data, "pretrained": evaluator.run(pretrained, task),
            "random_init": evaluator.run(baseline, task)}


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the terminal."""
    lines = [f"run directory        {summary['run_dir']}",
             f"steps                {summary['steps']}",
             f"final loss           {summary['final_loss']:.4f} (mean of the last "
             f"{summary['final_window']} steps)"]
    for key, value in summary.get("final_metrics", {}).items():
        name = "masked-patch accuracy" if key == "accuracy" else key
        lines.append(f"{name:<20} {value:.4f}")
    lines += [f"images/s             {summary['images_per_s']:.1f}",
              f"skipped samples      {summary['skipped']}",
              f"training time        {summary['train_s']:.1f} s"]
    few = summary.get("few_shot")
    if few:
        lines.append(f"few-shot top-1 on {few['data']} (%)   pretrained   random init")
        for key, value in few["pretrained"].items():
            base = few["random_init"].get(key, float("nan"))
            label = key.removeprefix("fewshot_").removesuffix("_top1")
            lines.append(f"  {label:<30} {value:10.2f}   {base:11.2f}")
    return "\n".join(lines)
