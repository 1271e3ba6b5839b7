"""``vitssl eval``: load a checkpoint, build the labelled task, run one evaluator, print a
table and the JSON record (appended to ``RUN/evals.jsonl`` for a run directory)."""

from __future__ import annotations

import inspect
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitssl.config import parse_override
from vitssl.config_values import check_finite
from vitssl.devices import resolve_device
from vitssl.errors import VitsslError

EVALS_FILE = "evals.jsonl"


def accepted_options(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword options a factory takes, or None when it takes any (``**kwargs``)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def _check_names(options: dict[str, Any], factory: Callable[..., Any], name: str,
                 where: str) -> None:
    accepted = accepted_options(factory)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise VitsslError(f"{where}unknown option(s) {', '.join(unknown)} for evaluator "
                          f"'{name}'; accepted: {', '.join(accepted)}")


def parse_options(items: Sequence[str], factory: Callable[..., Any],
                  name: str) -> dict[str, Any]:
    """``["shots=[5,10]", "seeds=2"]`` -> {"shots": [5, 10], "seeds": 2}, checked by name."""
    options = {".".join(keys): value for keys, value in map(parse_override, items)}
    _check_names(options, factory, name, "")
    return options


def build_evaluator(name: str, options: dict[str, Any], where: str = "") -> Any:
    """Evaluator ``name`` built with ``options``, checked by name and by the evaluator itself
    (``where`` starts the one-line errors)."""
    from vitssl.plugins import get_registry

    factory = get_registry().get("evaluators", name)
    _check_names(options, factory, name, where)
    check_finite(options, f"{where}{name} option ")
    try:
        return factory(**options)
    except (TypeError, ValueError) as exc:
        raise VitsslError(f"{where}bad options for evaluator '{name}' {options}: "
                          f"{str(exc).splitlines()[0]}") from None


def _checkpoint_source(checkpoint: str) -> tuple[Path | None, str, int | None]:
    """(the run directory if ``checkpoint`` is one, the checkpoint read, its step if named)."""
    from vitssl.train.checkpoint import latest_checkpoint

    path = Path(checkpoint)
    run_dir = path if path.is_dir() and ((path / "config.yaml").is_file()
                                         or (path / "checkpoints").is_dir()) else None
    if run_dir is not None:
        path = latest_checkpoint(run_dir) or path
    match = re.fullmatch(r"step-(\d+)", path.name) or re.fullmatch(r"step-(\d+)", path.parent.name)
    return run_dir, str(path), int(match[1]) if match else None


def format_table(metrics: dict[str, float]) -> str:
    width = max([len("metric")] + [len(k) for k in metrics])
    lines = [f"{'metric':<{width}}  {'value':>10}", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k:<{width}}  {v:>10.4g}" if abs(v) < 1e-2 and v != 0
              else f"{k:<{width}}  {v:>10.2f}" for k, v in metrics.items()]
    return "\n".join(lines)


def evaluate_cli(evaluator: str, checkpoint: str, data: str, overrides: Sequence[str] = (),
                 device: str = "auto") -> int:
    """Run ``evaluator`` on ``data`` with the encoder of ``checkpoint``; print and record."""
    from vitssl.data.tasks import run_task
    from vitssl.plugins import get_registry
    from vitssl.weights.layouts import load_any

    options = parse_options(overrides, get_registry().get("evaluators", evaluator), evaluator)
    instance = build_evaluator(evaluator, options)
    dev = resolve_device(device)
    encoder, cfg = load_any(checkpoint, device=dev)  # a vitssl run, timm or transformers
    image_size = getattr(instance, "image_size", None) or cfg.model.image_size
    task = run_task(data, image_size, cfg.data, encoder.in_chans)
    run_dir, source, step = _checkpoint_source(checkpoint)
    print(f"evaluating {source} ({cfg.model.name}, {image_size}px) with '{evaluator}' on "
          f"{task.name}: {len(task.train)} train / {len(task.test)} test, "
          f"{task.num_classes} classes, {dev}", file=sys.stderr)
    start = time.perf_counter()
    metrics = {k: float(v) for k, v in instance.run(encoder, task).items()}
    seconds = time.perf_counter() - start
    record = {"evaluator": evaluator, "data": data, "checkpoint": source, "step": step,
              "options": options, "metrics": metrics, "seconds": round(seconds, 2),
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    print(f"{evaluator} on {task.name}  (checkpoint {source}, {seconds:.1f} s)")
    print(format_table(metrics))
    line = json.dumps(record)
    print(line)
    if run_dir is not None:
        with open(run_dir / EVALS_FILE, "a") as fh:
            fh.write(line + "\n")
    return 0
