"""Training-step throughput of each objective on the same encoder, measured side by side.

Every objective wraps an encoder built from the same configuration and takes
the same batch; one training step is the library's own (``run_steps``: forward,
backward, clipping, the objective's hooks and the AdamW step), data loading aside.
Timed steps alternate between the objectives (interleaved) and the table
reports the median images/s of each and its ratio to ``--baseline``
(``masked-patch``). ``lightly:NAME`` is the lightly + timm peer of objective NAME
from ``peer_lightly.py`` (mae, dino, moco-v3; needs the ``peers`` extra), fed the
same batch with the settings of vitssl's NAME: its own step (forward, backward,
clip, torch's default AdamW, schedule, momentum update).

    python benchmarks/objective_step.py                        # the default run's encoder
    python benchmarks/objective_step.py --configs Ti/16@224 --batch-size 16
    python benchmarks/objective_step.py --objectives mae,masked-patch --repeats 20
    python benchmarks/objective_step.py --configs Ti/4@28:4 --objectives mae,lightly:mae \
        --baseline lightly:mae --set model.pos_embed=sincos

DINO's step runs the student on every crop and the teacher on the two global
ones (2 global crops at the image size, ``num_local`` local crops), so its
images/s counts source images, not crops.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: sleep, do not spin

import torch  # noqa: E402
from loop_step import interleaved_times, loop_step  # noqa: E402


def step_fn(name: str, model: str, size: int, depth: str, batch_size: int,
            extra: list[str] = ()) -> Callable[[], None]:
    """The library's own training step of objective ``name`` on one fixed batch, or with
    ``lightly:NAME`` the lightly peer's step of NAME on that batch."""
    sets = [f"model.name={model}", f"model.image_size={size}", "data.augment=false",
            f"model.depth={depth or 'null'}", *extra]
    method, peer = (name.split(":", 1)[1], True) if name.startswith("lightly:") else (name, False)
    step, run = loop_step(method, sets, batch_size)
    if not peer:
        return step
    from peer_lightly import Peer

    lightly_peer = Peer(run)
    lightly_peer.data = itertools.repeat(next(run.data))
    return lightly_peer.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="Ti/4@16:4",
                        help="comma-separated NAME@SIZE[:DEPTH], e.g. Ti/4@16:4,Ti/16@224")
    parser.add_argument("--objectives", default="masked-patch,mae,dino,supervised")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--baseline", default="masked-patch",
                        help="the objective the last column divides by")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every objective (e.g. model.pos_embed=sincos)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.objectives.split(",")
    print(f"threads {args.threads}, batch {args.batch_size}, median of {args.repeats} "
          f"interleaved steps")
    print(f"| encoder | objective | images/s | vs {args.baseline} |")
    print("|---|---|---|---|")
    for spec in args.configs.split(","):
        model, _, depth = spec.partition(":")
        name, size = model.split("@")
        steps = {n: step_fn(n, name, int(size), depth, args.batch_size, args.set)
                 for n in names}
        times = interleaved_times(steps, args.repeats)
        rate = {n: args.batch_size / statistics.median(t) for n, t in times.items()}
        base = rate.get(args.baseline)
        for n in names:
            ratio = f"{rate[n] / base:.2f}x" if base else "-"
            print(f"| {spec} | {n} | {rate[n]:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
