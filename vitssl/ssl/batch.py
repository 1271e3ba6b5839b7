"""Reading a batch in an objective: per-sample seeds and draws, progress, views, patches.

Everything here runs on the host or stays on the device without reading it
back: ``"sample_seed"`` is a CPU tensor the loop never moves, so per-sample
randomness is drawn on the host and copied to the device, never waited for.
"""

from __future__ import annotations

from typing import Any

import torch

from vitssl.errors import VitsslError


def per_sample_uniform(batch_size: int, shape: tuple[int, ...], device: torch.device,
                       seeds: list[int] | None = None) -> torch.Tensor:
    """Uniform draws (B, *shape) on ``device``, one generator per sample seed.

    Sample ``i``'s draws come from ``seeds[i]`` (the same whichever rank or batch
    it lands in); without seeds, from the global torch RNG on ``device``.
    """
    if seeds is None:
        return torch.rand(batch_size, *shape, device=device)
    return torch.stack([torch.rand(*shape, generator=torch.Generator().manual_seed(s))
                        for s in seeds]).to(device, non_blocking=True)


def batch_seeds(batch: dict[str, Any]) -> list[int] | None:
    """The batch's per-sample seeds as ints, or None (then draws use the global RNG)."""
    seeds = batch.get("sample_seed")
    return None if seeds is None else [int(s) for s in seeds.tolist()]


def progress(batch: dict[str, Any]) -> tuple[int, int]:
    """(step, total_steps) of the optimiser step the batch is for; (0, 1) outside the loop."""
    return int(batch.get("step", 0)), int(batch.get("total_steps", 1))


def views(batch: dict[str, Any], name: str, objective: str) -> torch.Tensor:
    """``batch["views"][name]`` (B, V, C, h, w), or a one-line error naming the objective."""
    found = (batch.get("views") or {}).get(name)
    if found is None:
        raise VitsslError(f"{objective} needs its '{name}' views in the batch "
                          f"(batch['views']['{name}']); run it through vitssl pretrain")
    return found


def square_side(objective: str, size: tuple[int, int]) -> int:
    """The side of a square model size; a one-line refusal of a non-square one."""
    height, width = size
    if height != width:
        raise VitsslError(f"{objective} makes square crops, not the non-square "
                          f"model.image_size [{height}, {width}]; use a square size")
    return height


def patchify(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C, ph, pw) with N = grid rows * cols, row-major."""
    b, c, h, w = images.shape
    gh, gw = grid
    ph, pw = h // gh, w // gw
    x = images[:, :, :gh * ph, :gw * pw].reshape(b, c, gh, ph, gw, pw)
    # "b c (h p) (w q) -> b (h w) c p q"
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, ph, pw)
