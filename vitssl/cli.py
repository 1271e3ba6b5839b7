"""The ``vitssl`` command line: pretrain, eval, plugins, shard, analyze, export, configs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from vitssl.errors import VitsslError

# vitssl.export.FORMATS, without importing torch for --help
EXPORT_FORMATS = ("timm", "hf", "transformers", "onnx")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise VitsslError(f"{self.prog}: {message}")


def _set_and_device(p: argparse.ArgumentParser, example: str, device: str | None) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"{example} (repeatable)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=device,
                   help="where to run")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    about = "pretrain an encoder with an objective plugin"
    p = sub.add_parser("pretrain", help=about, description=about)
    p.add_argument("--objective", help="objective plugin name (default: masked-patch)")
    p.add_argument("--model", help="variant/patch size, e.g. Ti/16, B/16 (default: Ti/4)")
    p.add_argument("--stem", help="patch stem plugin name (default: patch)")
    p.add_argument("--data", help="data spec, e.g. builtin:digits, folder:PATH, wds:URLS")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--image-size", type=int, help="input resolution in pixels")
    p.add_argument("--out", help="run directory (default: runs/<objective>-<timestamp>)")
    p.add_argument("--config", help="YAML config file, or a shipped recipe's name (vitssl configs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --out")
    p.add_argument("--init", help="start the encoder from these weights: a vitssl run or "
                                  "checkpoint, timm's layout or a transformers ViT folder")
    _set_and_device(p, "override a config key, e.g. train.lr=3e-4", None)


def _add_evaluation(sub: argparse._SubParsersAction) -> None:
    about = "evaluate a checkpoint with an evaluator plugin"
    p = sub.add_parser("eval", help=about, description=about)
    p.add_argument("--evaluator", required=True, help="evaluator plugin name, e.g. few-shot")
    p.add_argument("--checkpoint", required=True,
                   help="run directory, checkpoint, timm's layout or a transformers ViT folder")
    p.add_argument("--data", default="builtin:digits", help="labelled data spec")
    _set_and_device(p, "evaluator option, e.g. shots=[5,10]", "auto")
    p = sub.add_parser("analyze", help="draw the paper's section 4.5 figures from a checkpoint",
                       description="Filters, position embeddings, attention distance, rollout "
                                   "and training curves as PNGs plus analysis.json.")
    p.add_argument("checkpoint", help="run directory, checkpoint, timm's layout (a folder or a "
                                      "state dict file) or a transformers ViT folder")
    p.add_argument("--data", help="images to attend over (default: the run's data spec)")
    p.add_argument("--images", type=int, default=128, help="images to average over")
    p.add_argument("--out", help="output directory (default: RUN/analysis or ./analysis)")
    p.add_argument("--curves-only", action="store_true",
                   help="only training_curves.png from the run's metrics.jsonl")
    p.add_argument("--heads", type=int, help="head count of a timm state dict of unusual width")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p = sub.add_parser("export", help="write an encoder for timm, the HF hub, transformers, ONNX",
                       description="Write a pretrained encoder as timm weights + config.json "
                                   "(timm), a Hugging Face hub folder with a model card (hf; "
                                   "both load with timm.create_model('local-dir:DIR')), a "
                                   "transformers ViTModel folder (transformers) or an ONNX "
                                   "model (onnx).")
    p.add_argument("checkpoint", help="run directory, checkpoint directory or model.safetensors")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="target layout")
    p.add_argument("--out", help="output directory (default: RUN/export/FORMAT)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vitssl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_pretrain(sub)
    _add_evaluation(sub)
    about = "write webdataset shards from any data spec"
    p = sub.add_parser("shard", help=about, description=about)
    p.add_argument("--data", required=True, help="data spec to read")
    p.add_argument("--output", required=True, help="shard pattern, e.g. 'out/shard-%%06d.tar'")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    p = sub.add_parser("plugins", help="list registered plugins, or show one's reference")
    p.add_argument("name", nargs="?", help="a plugin to show (its module docstring), e.g. mae")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    about = "list the shipped recipes (configs/*.yaml), or show one and how to run it"
    p = sub.add_parser("configs", help=about, description=about)
    p.add_argument("name", nargs="?", help="a recipe to show, e.g. mae-b16")
    p.add_argument("--path", action="store_true", help="print only the recipe file's path")
    return parser


def _pretrain_config(args: argparse.Namespace):
    from vitssl.config import load_config
    from vitssl.recipes import config_file

    flags = {"objective.name": args.objective, "model.name": args.model, "model.stem": args.stem,
             "data.spec": args.data, "train.steps": args.steps, "out": args.out,
             "train.batch_size": args.batch_size, "model.image_size": args.image_size,
             "train.device": args.device, "model.init": args.init}
    overrides = [f"{key}={json.dumps(v)}" for key, v in flags.items() if v is not None]
    path = None if args.config is None else config_file(args.config)
    if args.resume and path is None and args.out is not None:
        saved = Path(args.out) / "config.yaml"
        path = saved if saved.is_file() else None  # resume the run as it was made
    # Explicit flags beat the config file; --set beats both.
    return load_config(path, overrides + list(args.set))


def _cmd_pretrain(args: argparse.Namespace) -> None:
    import os

    # Spinning OpenMP waits slow CPU training many-fold on shared cores; torch reads this
    # once on import, so it is set before the first torch import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from vitssl.plugins import get_registry

    cfg = _pretrain_config(args)
    get_registry().entry("objectives", cfg.objective.name)  # unknown name: one clear line
    if args.init and args.resume and cfg.out:
        from vitssl.train.checkpoint import list_checkpoints
        from vitssl.weights.init import resume_conflict

        if list_checkpoints(cfg.out):
            raise resume_conflict(cfg.out)
    from vitssl.train.run import pretrain

    pretrain(cfg, resume=args.resume)


def _cmd_eval(args: argparse.Namespace) -> None:
    from vitssl.eval.run import evaluate_cli

    evaluate_cli(evaluator=args.evaluator, checkpoint=args.checkpoint, data=args.data,
                 overrides=args.set, device=args.device)


def _cmd_shard(args: argparse.Namespace) -> None:
    from vitssl.data.shard import write_shards

    write_shards(args.data, args.output, maxcount=args.maxcount)


def _cmd_analyze(args: argparse.Namespace) -> None:
    from vitssl.analyze.command import analyze

    analyze(args.checkpoint, data=args.data, images=args.images, out=args.out,
            curves_only=args.curves_only, device=args.device, heads=args.heads)


def _cmd_export(args: argparse.Namespace) -> None:
    from vitssl.export import export, load_lines

    out = export(args.checkpoint, args.format, args.out)
    print(f"wrote {out}; load it with:")
    for line in load_lines(args.checkpoint, out, args.format):
        print(f"  {line}")


def _cmd_plugins(args: argparse.Namespace) -> None:
    import inspect

    from vitssl.plugins import KINDS, SINGULAR, get_registry, suggest

    registry = get_registry()
    if args.name:  # each plugin of that name and its module docstring
        found = [e for kind in KINDS if (e := registry.entries[kind].get(args.name))]
        if not found:
            known = {n for kind in KINDS for n in registry.entries[kind]}
            raise VitsslError(f"no plugin named '{args.name}'{suggest(args.name, known)}; "
                              f"`vitssl plugins` lists them")
        pages = []
        for e in found:
            module = sys.modules.get(getattr(e.factory, "__module__", ""))
            doc = (module and inspect.getdoc(module)) or inspect.getdoc(e.factory)
            pages.append(f"{SINGULAR[e.kind]} '{e.name}' from {e.distribution} "
                         f"({getattr(module, '__name__', e.plugin)})\n\n{doc or '(undocumented)'}")
        print("\n\n".join(pages))
        return
    listing = {
        kind: [{"name": e.name, "distribution": e.distribution, "plugin": e.plugin,
                "doc": ((e.factory.__doc__ or "").strip().splitlines() or [""])[0]}
               for e in sorted(registry.entries[kind].values(), key=lambda e: e.name)]
        for kind in KINDS}
    if args.json:
        failures = [vars(f) for f in registry.failures]
        print(json.dumps({**listing, "failures": failures}, indent=2))
        return
    for kind in KINDS:
        print(f"{kind}:")
        for item in listing[kind]:
            print(f"  {item['name']:<22} {item['distribution']:<18} {item['doc']}")
    for f in registry.failures:
        print(f"warning: plugin '{f.plugin}' from {f.distribution} failed: {f.error}",
              file=sys.stderr)


def _cmd_configs(args: argparse.Namespace) -> None:
    from vitssl.recipes import find_recipe, list_recipes, run_hint

    if args.name is None:
        recipes = list_recipes()
        width = max(len(r.name) for r in recipes)
        for r in recipes:
            print(f"{r.name:<{width}}  {r.kind:<8}  {r.description}")
        print(f"(in {recipes[0].path.parent}; show one with: vitssl configs NAME)",
              file=sys.stderr)
    elif args.path:
        print(find_recipe(args.name).path)
    else:
        recipe = find_recipe(args.name)
        print(recipe.path.read_text().rstrip())
        print("\n# run with:")
        for line in run_hint(recipe):
            print(f"#   {line}")


COMMANDS = {"pretrain": _cmd_pretrain, "eval": _cmd_eval, "shard": _cmd_shard,
            "plugins": _cmd_plugins, "analyze": _cmd_analyze, "configs": _cmd_configs,
            "export": _cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vitssl`` console script."""
    try:
        args = _parser().parse_args(argv)
        from vitssl.outputs import check_output

        for option, value in vars(args).items():
            check_output(args.command, option, value)
        COMMANDS[args.command](args)
        return 0
    except VitsslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
