"""The library's own training step, for benchmarks: a built run fed one fixed batch.

``loop_step`` builds a :class:`vitssl.train.build.Run` exactly as
``vitssl pretrain`` does (in a temporary run directory, nothing logged or
saved) and returns a function that takes the next step of
:func:`vitssl.train.run.run_steps` on a batch held in memory, so a benchmark
times the real step - micro-batches, backward, clipping, the objective's
hooks, the optimiser - without data loading.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable

import torch

from vitssl.config import load_config, normalisation
from vitssl.data.transforms import normalize
from vitssl.objective import Objective
from vitssl.train import distributed
from vitssl.train.build import Run, build_run
from vitssl.train.run import run_steps

NEVER = 10 ** 9  # steps between logging and checkpoint reads: never, in a benchmark


def random_batch(objective: Objective, batch_size: int, image_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> dict:
    """A random batch in the shape the loop hands to ``objective`` (its views included)."""
    g = torch.Generator().manual_seed(0)
    channels = getattr(objective.encoder, "in_chans", 3)
    pixels = torch.rand(batch_size, channels, image_size, image_size, generator=g)
    batch = {"pixels": pixels, "image": normalize(pixels, mean, std),
             "label": torch.randint(0, 10, (batch_size,), generator=g)}
    transform = objective.views((image_size, image_size), None)
    if transform is not None:
        crops = [transform((p * 255).to(torch.uint8)) for p in pixels]
        batch["views"] = {k: normalize(torch.stack([c[k] for c in crops]).float() / 255,
                                       mean, std) for k in crops[0]}
    return batch


def loop_step(objective: str, overrides: list[str], batch_size: int,
              device: str = "cpu") -> tuple[Callable[[], None], Run]:
    """One call = one step of ``objective`` on a fixed random batch (its metrics never read)."""
    out = tempfile.mkdtemp(prefix="vitssl-bench-")
    cfg = load_config(None, [f"objective.name={objective}", f"train.batch_size={batch_size}",
                             f"train.steps={NEVER}", f"train.log_every={NEVER}",
                             f"train.checkpoint_every={NEVER}", f"train.device={device}",
                             "summary_eval.enabled=false", f"out={out}", *overrides])
    run = build_run(cfg, distributed.setup(device))
    size = cfg.model.image_size if isinstance(cfg.model.image_size, int) else \
        cfg.model.image_size[0]
    batch = random_batch(run.objective, batch_size, size, *normalisation(run.cfg.data))
    run.data = itertools.repeat(batch)
    steps = run_steps(run, 0, NEVER)

    def step() -> None:
        next(steps)

    return step, run


def interleaved_times(steps: dict[str, Callable[[], None]],
                      repeats: int) -> dict[str, list[float]]:
    """Seconds of each step over ``repeats`` rounds, one call of each per round after a
    warm-up call, so every step sees the same machine state."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return times
