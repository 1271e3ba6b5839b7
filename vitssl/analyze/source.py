"""What ``vitssl analyze`` reads: a vitssl run or checkpoint, or any layout
:mod:`vitssl.weights.layouts` reads (timm's, a transformers folder); a bare timm state dict's
head count, which no shape reveals, comes from the ViT size table by width, or ``heads``.
Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vitssl.config import IMAGENET_MEAN, IMAGENET_STD, normalisation
from vitssl.models import VisionTransformer
from vitssl.train.runlog import METRICS
from vitssl.weights.layouts import describe, layout, read_encoder


@dataclass
class Subject:
    """An encoder to analyse and where it came from."""

    encoder: VisionTransformer
    format: str  # "vitssl" | "timm" | "transformers"
    path: str
    model: str
    stem: str
    step: int | None = None
    run_dir: Path | None = None
    data_spec: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: tuple[int, ...] | None = None  # the run's data.channels
    notes: list[str] = field(default_factory=list)


def find_run_dir(path: str | Path) -> Path | None:
    """The run directory holding ``metrics.jsonl`` for a run, checkpoint dir or weights file."""
    p = Path(path).resolve()
    for candidate in [p, *p.parents][:4]:
        if candidate.is_dir() and (candidate / METRICS).is_file():
            return candidate
    return None


def load_subject(path: str | Path, heads: int | None = None) -> Subject:
    """Resolve a run, checkpoint, timm or transformers weights to an encoder in eval mode."""
    kind, p = layout(path)
    if kind != "vitssl":
        loaded = read_encoder(p, heads=heads)
        return Subject(loaded.encoder.eval(), kind, str(loaded.files[0]), describe(loaded),
                       "patch", mean=loaded.mean or IMAGENET_MEAN,
                       std=loaded.std or IMAGENET_STD, notes=[
                           *loaded.notes, "architecture read from the weights; images "
                           "normalised with " + ("its mean/std" if loaded.mean else
                                                 "ImageNet mean/std")])
    from vitssl.train.checkpoint import load_encoder, weights_file

    weights = weights_file(p)
    encoder, cfg = load_encoder(weights)
    match = re.fullmatch(r"step-(\d+)", weights.parent.name)
    return Subject(encoder.eval(), "vitssl", str(weights), cfg.model.name, cfg.model.stem,
                   step=int(match[1]) if match else None, run_dir=find_run_dir(weights),
                   data_spec=cfg.data.spec, mean=normalisation(cfg.data)[0],
                   std=normalisation(cfg.data)[1], channels=cfg.data.channels)
