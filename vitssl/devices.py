"""Where to run: a ``--device auto|cpu|cuda`` name as a torch device, and the CPUs to use."""

from __future__ import annotations

import math
import os
from pathlib import Path

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


def _fields(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _cpus(fields: list[str]) -> int | None:
    """Whole CPUs (rounded up) of a ``[quota, period]`` pair; None for "max" or -1."""
    if len(fields) != 2 or not all(f.isdigit() and int(f) > 0 for f in fields):
        return None
    return math.ceil(int(fields[0]) / int(fields[1]))


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"),
                     own: Path = Path("/proc/self/cgroup")) -> int | None:
    """The tightest CPU quota (containers set it, not the affinity mask) of this process's
    cgroup and those above it (v2 ``cpu.max``, v1 ``cpu.cfs_*``), in whole CPUs; None if none."""
    v2 = root / next((f[3:] for f in _fields(own) if f.startswith("0::")), "").lstrip("/")
    folders = [v2, *v2.parents][:len(v2.relative_to(root).parts) + 1]
    limits = [_cpus(_fields(folder / "cpu.max")) for folder in folders]
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        limits.append(_cpus(_fields(v1 / "cpu.cfs_quota_us") + _fields(v1 / "cpu.cfs_period_us")))
    return min((limit for limit in limits if limit), default=None)


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask (else all), capped by a cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return min(cores, quota) if quota else cores


def local_ranks(world_size: int = 1) -> int:
    """Training processes sharing this machine: torchrun's ``LOCAL_WORLD_SIZE``, else all."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))


def fit_cpu_threads(cores: int, ranks: int = 1) -> int:
    """Cap torch's intra-op threads (one per core of the machine) at this rank's share of
    ``cores``, unless ``OMP_NUM_THREADS`` is set; the count in use."""
    if "OMP_NUM_THREADS" not in os.environ:
        share = max(1, cores // max(1, ranks))
        if torch.get_num_threads() > share:
            torch.set_num_threads(share)
    return torch.get_num_threads()
