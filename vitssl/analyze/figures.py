"""Draw the analysis figures with matplotlib's Agg canvas (no display, no global pyplot state),
each at a fixed size in pixels (:data:`SIZES`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitssl.analyze.filters import normalise_tile
from vitssl.analyze.position import tile_grid

DPI = 100
INCHES = {
    "filters.png": (7.0, 4.6),
    "position_embeddings.png": (6.4, 5.6),
    "attention_distance.png": (6.0, 4.5),
    "rollout.png": (8.0, 6.4),
    "training_curves.png": (11.0, 6.0),
}
SIZES = {name: (round(w * DPI), round(h * DPI)) for name, (w, h) in INCHES.items()}


@contextmanager
def _figure(out: Path, name: str) -> Iterator[Figure]:
    """A figure of ``name``'s size, saved as ``out / name`` when the block ends."""
    fig = Figure(figsize=INCHES[name], dpi=DPI)
    FigureCanvasAgg(fig)
    yield fig
    fig.savefig(out / name, dpi=DPI)  # no bbox_inches="tight": the size stays SIZES[name]


def draw_filters(components: torch.Tensor, ratio: torch.Tensor, out: Path) -> None:
    """Principal components (k, C, P, P), each tile normalised on its own, in a 4 x 7 grid:
    RGB for 3 channels, else the C bands side by side in grey."""
    with _figure(out, "filters.png") as fig:
        k = components.shape[0]
        cols = 7
        rows = max(1, math.ceil(k / cols))
        for i in range(rows * cols):
            ax = fig.add_subplot(rows, cols, i + 1)
            ax.set_axis_off()
            if i >= k:
                continue
            tile = normalise_tile(components[i]).float()
            if tile.shape[0] == 3:
                ax.imshow(tile.permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                gap = torch.full((tile.shape[1], 1), float("nan"))
                bands = torch.cat([part for band in tile for part in (band, gap)][:-1], dim=1)
                ax.imshow(np.ma.masked_invalid(bands.numpy()), cmap="gray",
                          interpolation="nearest")
            ax.set_title(f"{i + 1}: {100 * float(ratio[i]):.1f}%", fontsize=6)
        fig.suptitle("Principal components of the patch-embedding filters "
                     "(% of variance; sign arbitrary)", fontsize=9)


def draw_position_similarity(similarity: torch.Tensor, out: Path) -> None:
    """Cosine similarity (rows, cols, rows, cols) as a grid of grids with one colour bar."""
    with _figure(out, "position_embeddings.png") as fig:
        ax = fig.add_subplot(1, 1, 1)
        rows, cols = similarity.shape[:2]
        canvas = tile_grid(similarity).numpy()
        image = ax.imshow(np.ma.masked_invalid(canvas), cmap="viridis", vmin=-1, vmax=1,
                          interpolation="nearest")
        # Tile (r, c) spans canvas rows r(rows+1) .. r(rows+1)+rows-1: tick its centre.
        ax.set_xticks([c * (cols + 1) + (cols - 1) / 2 for c in range(cols)],
                      [str(c + 1) for c in range(cols)])
        ax.set_yticks([r * (rows + 1) + (rows - 1) / 2 for r in range(rows)],
                      [str(r + 1) for r in range(rows)])
        ax.tick_params(length=0, labelsize=7 if max(rows, cols) > 10 else 9)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("Input patch column")
        ax.set_ylabel("Input patch row")
        ax.set_title("Position embedding similarity")
        fig.colorbar(image, ax=ax, label="Cosine similarity", ticks=[-1, 0, 1], fraction=0.046)


def draw_attention_distance(distance: torch.Tensor, uniform: float, out: Path,
                            patch_size: int | Sequence[int]) -> None:
    """Mean attention distance (layers, heads): one dot per (layer, head)."""
    with _figure(out, "attention_distance.png") as fig:
        ax = fig.add_subplot(1, 1, 1)
        layers, heads = distance.shape
        for h in range(heads):
            ax.scatter(np.arange(1, layers + 1), distance[:, h].numpy(), s=14,
                       label=f"Head {h + 1}" if heads <= 16 else None)
        ax.axhline(uniform, color="0.5", linestyle="--", linewidth=1,
                   label="uniform attention")
        top = max(uniform, float(distance.max())) * 1.15
        ax.set_ylim(0, top if top > 0 else 1)
        ax.set_xlim(0.5, layers + 0.5)
        ax.set_xticks(range(1, layers + 1) if layers <= 24 else range(1, layers + 1, 2))
        ax.set_xlabel("Network depth (layer)")
        ax.set_ylabel("Mean attention distance (pixels)")
        ax.set_title(f"Mean attention distance per head (patch size {patch_size} px)")
        ax.legend(fontsize=6, ncol=2, loc="lower right")
        fig.tight_layout()


def draw_rollout(pixels: torch.Tensor, maps: torch.Tensor, out: Path, title: str) -> None:
    """Per image (n, C, H, W) in [0, 1]: the input, its rollout map, the input masked by it
    (C != 3: the mean of the bands, in grey)."""
    if pixels.shape[1] != 3:
        pixels = pixels.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    with _figure(out, "rollout.png") as fig:
        n = pixels.shape[0]
        masks = F.interpolate(maps[:, None].float(), size=pixels.shape[-2:], mode="bilinear",
                              align_corners=False)
        masks = masks / masks.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        rows = (("input", lambda i: pixels[i].permute(1, 2, 0).clamp(0, 1).numpy(), {}),
                ("rollout map", lambda i: maps[i].float().numpy(), {"cmap": "inferno"}),
                ("image x map", lambda i: (pixels[i] * masks[i]).permute(1, 2, 0).clamp(0, 1)
                 .numpy(), {}))
        for r, (label, picture, style) in enumerate(rows):
            for i in range(n):
                ax = fig.add_subplot(3, n, r * n + i + 1)
                ax.imshow(picture(i), interpolation="nearest", **style)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_ylabel(label, fontsize=8)
        fig.suptitle(title, fontsize=9)


def draw_curves(curves: dict[str, tuple[list[int], list[float]]], out: Path,
                title: str) -> None:
    """One panel per logged quantity against step."""
    with _figure(out, "training_curves.png") as fig:
        keys = list(curves)
        cols = min(3, max(1, len(keys)))
        rows = max(1, math.ceil(len(keys) / cols))
        for i, key in enumerate(keys):
            steps, values = curves[key]
            ax = fig.add_subplot(rows, cols, i + 1)
            ax.plot(steps, values, linewidth=1)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if key == "loss" and min(values) > 0 and max(values) / min(values) > 20:
                ax.set_yscale("log")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
