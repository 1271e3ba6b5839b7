"""VTAB-1k over a vtab-1k folder tree, or over the embedded tasks when none is given.

    python benchmarks/vtab.py --checkpoint RUN [--data-root DIR] [--tasks a,b]
        [--protocol paper|petl|quick] [--adapt finetune|linear-probe]
        [--image-size N] [--output results.json] [--resume] [--device auto|cpu|cuda]
        [--set KEY=VALUE ...]

Every task runs through the ``vtab`` evaluator. With ``--data-root``, folders named after
VTAB tasks run in their groups and other vtab-1k folders as custom tasks in an "other" group,
outside the VTAB means (``--tasks NAME:classes=N`` gives a class count). The table (per task,
group means, both overall means, PAPER.md's reference rows) is printed and written to
``--output`` (JSON) and its ``.md`` twin after every task. Exit status 1 when a task failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitssl.config import normalisation
from vitssl.devices import resolve_device
from vitssl.errors import VitsslError
from vitssl.eval.vtab_protocol import ADAPTATIONS, PROTOCOLS
from vitssl.eval.vtab_report import format_text
from vitssl.eval.vtab_suite import default_output, encoder_at, run_suite, select_tasks


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint")
    p.add_argument("--data-root", help="vtab-1k tree (one folder per task); default: "
                                       "the embedded tasks")
    p.add_argument("--tasks", help="comma-separated task names (default: all present); a "
                                   "custom task may give its class count as NAME:classes=N")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="default: paper with --data-root, quick on the embedded tasks")
    p.add_argument("--adapt", choices=ADAPTATIONS, default="finetune")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's resolution")
    p.add_argument("--output", help="results JSON (default: RUN/vtab-PROTOCOL-ADAPT.json)")
    p.add_argument("--resume", action="store_true", help="skip tasks already in --output")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an option of every training, e.g. steps=20 or "
                        "eval_batch_size=64 (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from vitssl.outputs import check_output
        from vitssl.plugins import get_registry
        from vitssl.train.checkpoint import load_encoder

        check_output("vtab", "output", args.output)

        protocol = args.protocol or ("paper" if args.data_root else "quick")
        tasks, problems = select_tasks(args.data_root, args.tasks)
        encoder, cfg = load_encoder(args.checkpoint, device=resolve_device(args.device))
        encoder, image_size = encoder_at(encoder, cfg, args.image_size)
        from vitssl.config import parse_override

        extra = {".".join(k): v for k, v in map(parse_override, args.set)}
        evaluator = get_registry().get("evaluators", "vtab")(protocol=protocol,
                                                             adapt=args.adapt, options=extra)
        output = Path(args.output) if args.output else default_output(
            args.checkpoint, protocol, args.adapt)
        print(f"vtab: {len(tasks)} task(s), protocol {protocol}, {args.adapt}, {image_size} px; "
              f"results -> {output}", file=sys.stderr, flush=True)
        doc = run_suite(checkpoint=args.checkpoint, encoder=encoder,
                        mean=normalisation(cfg.data)[0], std=normalisation(cfg.data)[1],
                        image_size=image_size, tasks=tasks, problems=problems,
                        evaluator=evaluator, protocol=protocol, adapt=args.adapt,
                        output=output, resume=args.resume, options=extra)
    except VitsslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished tasks are in the output file (use --resume)",
              file=sys.stderr)
        return 130
    print(format_text(doc))
    print(f"written: {output} and {output.with_suffix('.md')}")
    return 1 if doc["summary"]["num_failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
