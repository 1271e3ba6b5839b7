"""``vitssl analyze``: compute every figure's numbers, draw the PNGs, write ``analysis.json``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vitssl.analyze import figures
from vitssl.analyze.attention import explicit_features, iter_attention
from vitssl.analyze.curves import NOT_PLOTTED, read_curves, summarise_curves
from vitssl.analyze.distance import CONVENTION, mean_attention_distance, patch_distances
from vitssl.analyze.filters import NUM_COMPONENTS, filter_components, pixel_filters
from vitssl.analyze.position import neighbour_contrast, position_similarity
from vitssl.analyze.rollout import attention_rollout, rollout_map
from vitssl.analyze.source import Subject, find_run_dir, load_subject
from vitssl.devices import resolve_device
from vitssl.errors import VitsslError
from vitssl.eval.progress import progress
from vitssl.models.sizes import to_pair

ANALYSIS = "analysis.json"
ROLLOUT_IMAGES = 4
BATCH = 32


def _rounded(x: torch.Tensor, digits: int = 4) -> Any:
    return torch.round(x.double(), decimals=digits).tolist()


def _filters(subject: Subject, out: Path) -> dict[str, Any]:
    weight, reason = pixel_filters(subject.encoder)
    if weight is None:
        (out / "filters.png").unlink(missing_ok=True)  # never leave an older model's figure
        return {"available": False, "reason": reason}
    components, ratio = filter_components(weight.cpu(), NUM_COMPONENTS)
    figures.draw_filters(components, ratio, out)
    return {"available": True, "num_filters": weight.shape[0],
            "filter_shape": list(weight.shape[1:]), "components": components.shape[0],
            "explained_variance_ratio": _rounded(ratio),
            "figure": "filters.png"}


def _positions(subject: Subject, out: Path) -> dict[str, Any]:
    encoder = subject.encoder
    grid = tuple(encoder.grid_size)
    with torch.no_grad():
        pos = encoder.patch_pos_embed(grid)[0].cpu()
    sim = position_similarity(pos, grid)
    figures.draw_position_similarity(sim, out)
    return {"grid": list(grid), "class_token_excluded": encoder.num_prefix_tokens > 0,
            "mean_similarity": neighbour_contrast(sim),
            "similarity": _rounded(sim.reshape(grid[0] * grid[1], -1), 3),
            "layout": "row r*cols+c is patch (r, c) against every patch in row-major order",
            "figure": "position_embeddings.png"}


def _attention(subject: Subject, spec: str, count: int, device: torch.device,
               out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from vitssl.analyze.images import load_images

    encoder = subject.encoder
    grid, patch = tuple(encoder.grid_size), to_pair(encoder.patch_size)
    size = getattr(encoder.patch_embed, "image_size", None) or (grid[0] * patch[0],
                                                               grid[1] * patch[1])
    pixels, images = load_images(spec, count, to_pair(size), subject.mean, subject.std,
                                 subject.channels)
    prefix = encoder.num_prefix_tokens
    n = images.shape[0]
    total = torch.zeros(len(encoder.blocks), encoder.num_heads, dtype=torch.float64)
    keep = min(ROLLOUT_IMAGES, n)
    kept: list[torch.Tensor] = []  # the first batch's weights per block, for the rollout
    batches = images.split(BATCH)
    for b, batch in enumerate(progress(batches, len(batches), "attention")):
        for layer, (_, weights) in enumerate(iter_attention(encoder, batch.to(device))):
            total[layer] += mean_attention_distance(weights, grid, patch, prefix).sum(0).cpu()
            if b == 0:
                kept.append(weights[:keep].cpu())
    distance = total / n
    with torch.no_grad():
        probe = images[:2].to(device)
        gap = (explicit_features(encoder, probe) - encoder.forward_features(probe)).abs().max()
    # Uniform attention over all T tokens: the patch share times the mean centre distance.
    uniform = float(patch_distances(grid, patch).mean()) * (grid[0] * grid[1]) / \
        (grid[0] * grid[1] + prefix)
    figures.draw_attention_distance(distance, uniform, out, encoder.patch_size)
    maps = rollout_map(attention_rollout(kept), grid, prefix)
    token = "class-token row" if prefix else "mean over patch query rows (no class token)"
    figures.draw_rollout(pixels[:keep], maps, out, f"Attention rollout ({token}) on {spec}")
    attention = {
        "source": "explicit softmax(q k^T / sqrt(head_dim)) in float32 from each block's own "
                  "q and k, blocks run one by one; never a fused kernel",
        "features_max_abs_diff_vs_forward_features": float(gap),
        "convention": CONVENTION, "images": n, "data": spec, "patch_size_px": list(patch),
        "grid": list(grid), "per_layer_head": _rounded(distance, 3),
        "per_layer_mean": _rounded(distance.mean(1), 3),
        "per_layer_min": _rounded(distance.amin(1), 3),
        "per_layer_max": _rounded(distance.amax(1), 3),
        "uniform_attention_reference": round(uniform, 3), "figure": "attention_distance.png"}
    roll = {"token": token, "images": keep, "maps": _rounded(maps, 4),
            "figure": "rollout.png"}
    return attention, roll


def _curves(run_dir: Path | None, out: Path) -> dict[str, Any]:
    if run_dir is None:
        return {"available": False, "reason": "not a run directory: no metrics.jsonl"}
    curves = read_curves(run_dir)
    figures.draw_curves(curves, out, f"Training curves: {run_dir.name}")
    return {"available": True, "run_dir": str(run_dir), "not_plotted": list(NOT_PLOTTED),
            "metrics": summarise_curves(curves), "figure": "training_curves.png"}


def analyze(checkpoint: str, *, data: str | None = None, images: int = 128,
            out: str | None = None, curves_only: bool = False, device: str = "auto",
            heads: int | None = None) -> dict[str, Any]:
    """Write the figures and ``analysis.json`` for ``checkpoint`` under ``out``; the record."""
    start = time.perf_counter()
    if curves_only:
        run_dir = find_run_dir(checkpoint)
        if run_dir is None:
            raise VitsslError(f"--curves-only needs a run directory with metrics.jsonl; "
                              f"'{checkpoint}' has none")
        target = Path(out) if out else run_dir / "analysis"
        target.mkdir(parents=True, exist_ok=True)
        record = {"checkpoint": checkpoint, "training_curves": _curves(run_dir, target)}
    else:
        if images < 1:
            raise VitsslError(f"--images must be >= 1, got {images}")
        dev = resolve_device(device)
        subject = load_subject(checkpoint, heads)
        subject.encoder.to(dev).eval()
        spec = data or subject.data_spec or "builtin:digits"
        target = Path(out) if out else (subject.run_dir / "analysis" if subject.run_dir
                                        else Path("analysis"))
        target.mkdir(parents=True, exist_ok=True)
        enc = subject.encoder
        print(f"analysing {subject.path} ({subject.model}, {subject.format}, grid "
              f"{tuple(enc.grid_size)}, {len(enc.blocks)} blocks x {enc.num_heads} heads) "
              f"on up to {images} images of {spec}, {dev}", file=sys.stderr)
        attention, roll = _attention(subject, spec, images, dev, target)
        record = {
            "checkpoint": subject.path, "format": subject.format, "step": subject.step,
            "model": {"name": subject.model, "stem": subject.stem,
                      "embed_dim": enc.embed_dim, "depth": len(enc.blocks),
                      "heads": enc.num_heads, "patch_size": list(to_pair(enc.patch_size)),
                      "grid": list(enc.grid_size), "class_token": enc.num_prefix_tokens > 0},
            "notes": subject.notes,
            "filters": _filters(subject, target),
            "position_embeddings": _positions(subject, target),
            "attention_distance": attention, "rollout": roll,
            "training_curves": _curves(subject.run_dir, target)}
    record["seconds"] = round(time.perf_counter() - start, 2)
    path = target / ANALYSIS
    path.write_text(json.dumps(record, indent=1) + "\n")
    drawn = [part["figure"] for part in record.values()
             if isinstance(part, dict) and "figure" in part]
    print(f"wrote {path} and {', '.join(drawn) or 'no figures'} ({record['seconds']} s)")
    for part in ("filters", "training_curves"):
        if part in record and not record[part].get("available", True):
            print(f"skipped {part}: {record[part]['reason']}")
    return record
