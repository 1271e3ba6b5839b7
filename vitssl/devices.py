"""Where to run: a ``--device auto|cpu|cuda`` name as a torch device."""

from __future__ import annotations

import torch

from vitssl.errors import VitsslError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; on CUDA, GPU ``local_rank`` (modulo the
    visible count). An unknown name, or ``cuda`` without a GPU, is a :class:`VitsslError`."""
    if name not in DEVICES:
        raise VitsslError(f"unknown device '{name}'; accepted: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise VitsslError("--device cuda was requested but no CUDA device is available; "
                          "use --device cpu or auto")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())
