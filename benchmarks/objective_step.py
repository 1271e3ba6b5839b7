"""Training-step throughput of each objective on the same encoder, measured side by side.

Every objective wraps an encoder built from the same configuration and takes
the same batch; one training step is forward, backward and an AdamW step.
Timed steps alternate between the objectives (interleaved) and the table
reports the median images/s of each and its ratio to ``masked-patch``.

    python benchmarks/objective_step.py                        # the default run's encoder
    python benchmarks/objective_step.py --configs Ti/16@224 --batch-size 16
    python benchmarks/objective_step.py --objectives mae,masked-patch --repeats 20

DINO's step runs the student on every crop and the teacher on the two global
ones (2 global crops at the image size, ``num_local`` local crops), so its
images/s counts source images, not crops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: sleep, do not spin

import torch  # noqa: E402

from vitssl.config import ModelConfig  # noqa: E402
from vitssl.data.transforms import normalize  # noqa: E402
from vitssl.models import build_encoder  # noqa: E402
from vitssl.plugins import get_registry  # noqa: E402
from vitssl.train.optim import build_optimizer  # noqa: E402


def make_batch(objective: torch.nn.Module, batch_size: int, image_size: int) -> dict:
    """A random batch in the shape the loop hands to this objective."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch_size, 3, image_size, image_size, generator=g)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batch = {"pixels": pixels, "image": normalize(pixels, mean, std),
             "label": torch.randint(0, 10, (batch_size,), generator=g),
             "sample_seed": torch.arange(batch_size), "step": 0, "total_steps": 100}
    views = getattr(objective, "views", None)
    if callable(views):
        transform = views(image_size, None)
        crops = [transform((p * 255).to(torch.uint8)) for p in pixels]
        batch["views"] = {k: normalize(torch.stack([c[k] for c in crops]).float() / 255,
                                       mean, std) for k in crops[0]}
    return batch


def step_fn(name: str, cfg: ModelConfig, batch_size: int) -> Callable[[], None]:
    torch.manual_seed(0)
    options = {"num_classes": 10} if name == "supervised" else {}
    objective = get_registry().get("objectives", name)(encoder=build_encoder(cfg), **options)
    optimizer = build_optimizer(objective, lr=1e-4, weight_decay=0.05)
    batch = make_batch(objective, batch_size, cfg.image_size)
    objective.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        objective(batch)["loss"].backward()
        if hasattr(objective, "before_optimizer_step"):
            objective.before_optimizer_step(0, 100)
        optimizer.step()
        if hasattr(objective, "after_optimizer_step"):
            objective.after_optimizer_step(0, 100)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="Ti/4@16:4",
                        help="comma-separated NAME@SIZE[:DEPTH], e.g. Ti/4@16:4,Ti/16@224")
    parser.add_argument("--objectives", default="masked-patch,mae,dino,supervised")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.objectives.split(",")
    print(f"threads {args.threads}, batch {args.batch_size}, median of {args.repeats} "
          f"interleaved steps")
    print("| encoder | objective | images/s | vs masked-patch |")
    print("|---|---|---|---|")
    for spec in args.configs.split(","):
        model, _, depth = spec.partition(":")
        name, size = model.split("@")
        cfg = ModelConfig(name=name, image_size=int(size), depth=int(depth) if depth else None)
        steps = {n: step_fn(n, cfg, args.batch_size) for n in names}
        for step in steps.values():  # warm-up
            step()
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.repeats):
            for n, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[n].append(time.perf_counter() - t0)
        rate = {n: args.batch_size / statistics.median(t) for n, t in times.items()}
        base = rate.get("masked-patch")
        for n in names:
            ratio = f"{rate[n] / base:.2f}x" if base else "-"
            print(f"| {spec} | {n} | {rate[n]:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
