"""The VTAB-1k suite over many tasks (``benchmarks/vtab.py``): task discovery, encoder
loading, the resumable run; tasks from a vtab-1k tree or, without one, the embedded tasks."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from vitssl.config import image_hw
from vitssl.data.vtab1k import LIST_SPLITS, VTAB_CLASSES, split_target
from vitssl.errors import VitsslError
from vitssl.eval.vtab_report import load_document, task_group, write_document
from vitssl.eval.vtab_splits import load_vtab_task

# Embedded tasks: name -> spec. dSprites ship VTAB splits; digits gets 800/200 carved.
EMBEDDED_TASKS = {"dsprites-loc": "builtin:dsprites-loc", "dsprites-ori": "builtin:dsprites-ori",
                  "digits": "builtin:digits"}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class TaskRef:
    """A task to run: its display name, data spec and group."""

    name: str
    spec: str
    group: str


def select_tasks(data_root: str | Path | None,
                 tasks: str | list[str] | None = None) -> tuple[list[TaskRef], list[str]]:
    """(tasks to run, one problem line per missing or unusable task folder).

    Without ``tasks``: every folder of ``data_root`` named after a VTAB task, then every
    other folder in the vtab-1k layout (a custom task, group "other"). A custom name may
    carry its class count as ``NAME:classes=N``; unknown names are an error.
    """
    names = [n.strip() for n in (tasks.split(",") if isinstance(tasks, str) else tasks or ())
             if n.strip()]
    if data_root is None:
        unknown = [n for n in names if n not in EMBEDDED_TASKS]
        if unknown:
            raise VitsslError(f"unknown embedded task(s) {', '.join(unknown)}; known: "
                              f"{', '.join(EMBEDDED_TASKS)} (or give --data-root for vtab-1k "
                              f"folders)")
        return [TaskRef(n, EMBEDDED_TASKS[n], task_group(n)) for n in names or EMBEDDED_TASKS], []
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise VitsslError(f"--data-root {root} is not a directory")
    if names:
        chosen = [split_target(n) for n in names]
        unknown = [n for n, _ in chosen if n not in VTAB_CLASSES and not (root / n).is_dir()]
        if unknown:
            raise VitsslError(f"unknown task(s) {', '.join(unknown)}: neither a VTAB task "
                              f"({', '.join(VTAB_CLASSES)}) nor a folder in {root}")
    else:
        custom = sorted(p.name for p in root.iterdir() if p.name not in VTAB_CLASSES
                        and any((p / f"{s}.txt").is_file() for s in LIST_SPLITS))
        chosen = [(n, None) for n in VTAB_CLASSES if (root / n).is_dir()]
        chosen += [(n, None) for n in custom]
        if not chosen:
            raise VitsslError(f"--data-root {root} holds no task folder: none named after a "
                              f"VTAB task ({', '.join(VTAB_CLASSES)}) and none with the "
                              f"vtab-1k list files ({', '.join(LIST_SPLITS)})")
    refs, problems = [], []
    for name, classes in chosen:
        folder = root / name
        if not folder.is_dir():
            problems.append(f"{name}: missing task folder {folder}")
            continue
        missing = [s for s in LIST_SPLITS if not (folder / f"{s}.txt").is_file()]
        if missing:
            problems.append(f"{name}: missing list file(s) "
                            + ", ".join(str(folder / f"{s}.txt") for s in missing))
            continue
        suffix = f":classes={classes}" if classes is not None else ""
        group = task_group(name) if name in VTAB_CLASSES else "other"
        refs.append(TaskRef(name, f"vtab1k:{folder}{suffix}", group))
    return refs, problems


def encoder_at(encoder: nn.Module, cfg: Any, image_size: int | None) -> tuple[nn.Module, int]:
    """The encoder rebuilt for ``image_size`` (position embeddings resampled), and the size.

    ``None`` or the checkpoint's own square size returns the encoder unchanged;
    a checkpoint pretrained at H x W (H != W) runs at max(H, W) unless told.
    """
    height, width = image_hw(cfg.model.image_size)
    if image_size is None:
        image_size = max(height, width)
    if (height, width) == (int(image_size), int(image_size)):
        return encoder, int(image_size)
    from vitssl.models import build_encoder

    resized = build_encoder(replace(cfg.model, image_size=int(image_size)))
    resized.source_grid = tuple(encoder.grid_size)  # pos_embed's grid, square or not
    resized.load_state_dict(encoder.state_dict())  # resamples pos_embed to the new grid
    device = next(encoder.parameters()).device
    return resized.to(device).eval(), int(image_size)


def default_output(checkpoint: str | Path, protocol: str, adapt: str) -> Path:
    """``RUN/vtab-PROTOCOL-ADAPT.json`` next to the checkpoint's run directory."""
    path = Path(checkpoint)
    run = path if path.is_dir() else path.parent
    if run.parent.name == "checkpoints":  # RUN/checkpoints/step-N
        run = run.parent.parent
    return run / f"vtab-{protocol}-{adapt}.json"


def run_suite(*, checkpoint: str, encoder: nn.Module, mean: tuple[float, ...],
              std: tuple[float, ...], image_size: int, tasks: list[TaskRef],
              problems: list[str], evaluator: Any, protocol: str, adapt: str,
              output: str | Path, resume: bool = False, options: dict[str, Any] | None = None,
              log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run ``evaluator`` (a ``vtab`` evaluator) on every task, writing JSON + Markdown after
    each (so an interrupted suite can ``resume``); a failing task is recorded with its one-line
    error and the rest continue."""
    output = Path(output)
    if resume and output.is_file():
        doc = load_document(output, protocol=protocol, adapt=adapt, image_size=image_size)
    else:
        doc = {"checkpoint": str(checkpoint), "protocol": protocol, "adapt": adapt,
               "image_size": image_size, "tasks": {}, "summary": {}}
    doc["overrides"] = dict(options or {})  # --set options applied to every training
    for line in problems:
        log(f"vtab: {line}")
        name = line.split(":", 1)[0]
        if doc["tasks"].get(name, {}).get("status") != "ok":
            doc["tasks"][name] = {"status": "failed", "group": task_group(name),
                                  "error": line.split(": ", 1)[-1]}
    write_document(doc, output)
    for i, ref in enumerate(tasks, start=1):
        previous = doc["tasks"].get(ref.name)
        if resume and previous is not None and previous.get("status") == "ok":
            log(f"vtab: [{i}/{len(tasks)}] {ref.name}: done earlier "
                f"(top-1 {previous['top1']:.2f}), skipped")
            continue
        log(f"vtab: [{i}/{len(tasks)}] {ref.name} ({ref.spec})")
        start = time.monotonic()
        try:
            task = load_vtab_task(ref.spec, image_size, mean=mean, std=std)
            task = replace(task, name=ref.name)
            outcome = evaluator.evaluate(encoder, task)
        except Exception as exc:  # noqa: BLE001 - one failing task must not stop the suite
            message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, VitsslError) \
                else str(exc)
            message = message.splitlines()[0] if message else type(exc).__name__
            log(f"vtab: {ref.name}: failed: {message}")
            doc["tasks"][ref.name] = {"status": "failed", "group": ref.group,
                                      "error": message, "time_s": time.monotonic() - start}
        else:
            doc["tasks"][ref.name] = {
                "status": "ok", "group": ref.group, "spec": ref.spec,
                "top1": outcome.top1, "setting_name": outcome.setting.name,
                "setting": outcome.setting.options, "val_top1": outcome.val_top1,
                "train_sizes": [len(task.train800), len(task.val200), len(task.train)],
                "test_size": len(task.test), "time_s": time.monotonic() - start}
            log(f"vtab: {ref.name}: test top-1 {outcome.top1:.2f} with {outcome.setting.name} "
                f"({time.monotonic() - start:.0f}s)")
        write_document(doc, output)
    return doc
