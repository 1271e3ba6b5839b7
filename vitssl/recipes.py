"""Shipped recipes: the YAML files of the top-level ``configs/`` folder (in the wheel
``vitssl/configs``; docs/training.md). Each opens with a comment block: a one-line
description, then ``Source:``, ``Hardware:``, ``Expected:``, ``Changed:`` (and ``Format:``)
fields, each continuing on further comment lines.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from vitssl.config import Config, configs_dir, load_config, read_yaml_mapping
from vitssl.errors import VitsslError

HEADER_FIELDS = ("Source", "Hardware", "Expected", "Changed")  # required in every recipe
OPTIONAL_FIELDS = ("Format",)
EVALUATE_KEYS = ("evaluator", "data", "options")
_FIELD = re.compile(rf"^({'|'.join(HEADER_FIELDS + OPTIONAL_FIELDS)}):\s*(.*)$")


@dataclass(frozen=True)
class Recipe:
    """One shipped YAML file and what its opening comment says."""

    name: str
    path: Path
    kind: str  # "pretrain" | "evaluate"
    description: str
    header: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Evaluation:
    """An evaluation recipe: which evaluator, on what data, with which options."""

    evaluator: str
    data: str | None
    options: dict[str, Any] = field(hash=False)


def read_header(text: str) -> tuple[str, dict[str, str]]:
    """The opening comment block -> (one-line description, {field: text})."""
    lines = list(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines()))
    lines = [line[1:].strip() for line in lines] or [""]
    fields: dict[str, str] = {}
    current = None
    for line in lines[1:]:
        match = _FIELD.match(line)
        if match:
            current = match[1]
            fields[current] = match[2]
        elif current is not None and line:
            fields[current] = f"{fields[current]} {line}".strip()
        else:
            current = None  # a blank comment line ends a field
    return lines[0], fields


def read_recipe(path: str | Path) -> Recipe:
    """A recipe file's name, kind and header."""
    path = Path(path)
    description, header = read_header(path.read_text())
    kind = "evaluate" if "evaluate" in read_yaml_mapping(path, "recipe") else "pretrain"
    return Recipe(path.stem, path, kind, description, header)


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by name."""
    return [read_recipe(p) for p in sorted(configs_dir().glob("*.yaml"))]


def _shipped(name: str, missing: str) -> Recipe:
    """The shipped recipe ``mae-b16``, ``mae-b16.yaml`` or ``configs/mae-b16.yaml`` names;
    else ``missing`` (a format of ``name`` and ``shipped``) as the error."""
    recipes = {r.name: r for r in list_recipes()}
    path = PurePath(name)
    named = str(path.parent) in (".", "configs") and path.suffix in ("", ".yaml")
    if named and path.stem in recipes:
        return recipes[path.stem]
    raise VitsslError(missing.format(name=name, shipped=", ".join(recipes)))


def find_recipe(name: str) -> Recipe:
    """A shipped recipe by name (``mae-b16``, ``mae-b16.yaml``), or a recipe file's path."""
    if Path(name).is_file():
        return read_recipe(name)
    return _shipped(name, "unknown recipe '{name}'; shipped: {shipped}")


def config_file(name: str | Path) -> Path:
    """What ``--config`` names: a YAML file, or else a shipped recipe (``mae-b16``)."""
    if Path(name).is_file():
        return Path(name)
    return _shipped(str(name), "config file not found: {name} (nor is it a shipped recipe: "
                               "{shipped})").path


def load_pretrain(recipe: Recipe, overrides: list[str] = ()) -> Config:
    """The typed config of a pretraining recipe (``--set`` style overrides last)."""
    if recipe.kind != "pretrain":
        raise VitsslError(f"recipe '{recipe.name}' is an evaluation recipe; run it with "
                          f"vitssl eval (see: vitssl configs {recipe.name})")
    return load_config(recipe.path, list(overrides))


def load_evaluation(recipe: Recipe) -> Evaluation:
    """The ``evaluate:`` section, checked: known keys, a registered evaluator, its options."""
    from vitssl.eval.run import build_evaluator

    data = read_yaml_mapping(recipe.path, "recipe")
    if set(data) != {"evaluate"}:
        raise VitsslError(f"recipe {recipe.path}: an evaluation recipe holds only an "
                          f"'evaluate' section, got {sorted(data)}")
    section = data["evaluate"]
    if not isinstance(section, dict):
        raise VitsslError(f"recipe {recipe.path}: 'evaluate' must be a mapping")
    unknown = sorted(set(section) - set(EVALUATE_KEYS))
    if unknown or "evaluator" not in section:
        raise VitsslError(f"recipe {recipe.path}: 'evaluate' needs 'evaluator' and may hold "
                          f"{', '.join(EVALUATE_KEYS)}; got {sorted(section)}")
    name = str(section["evaluator"])
    options = section.get("options") or {}
    if not isinstance(options, dict):
        raise VitsslError(f"recipe {recipe.path}: 'evaluate.options' must be a mapping")
    build_evaluator(name, dict(options), f"recipe {recipe.path}: ")  # its own checks too
    data_spec = section.get("data")
    return Evaluation(name, None if data_spec is None else str(data_spec), dict(options))


def _flow(value: Any) -> str:
    """A value as a one-line YAML (JSON) literal for ``--set KEY=VALUE``."""
    return value if isinstance(value, str) else json.dumps(value)


def eval_command(evaluation: Evaluation, checkpoint: str = "RUN",
                 data: str | None = None) -> list[str]:
    """The ``vitssl eval`` argv that runs an evaluation recipe on ``checkpoint``."""
    argv = ["vitssl", "eval", "--evaluator", evaluation.evaluator, "--checkpoint", checkpoint]
    data = data or evaluation.data
    if data is not None:
        argv += ["--data", data]
    for key, value in evaluation.options.items():
        argv += ["--set", f"{key}={_flow(value)}"]
    return argv


def vtab_benchmark_command(evaluation: Evaluation, checkpoint: str = "RUN",
                           data_root: str = "VTAB1K_DIR") -> list[str]:
    """The ``benchmarks/vtab.py`` argv for a ``vtab`` recipe over a vtab-1k tree."""
    flags = {"protocol": "--protocol", "adapt": "--adapt", "image_size": "--image-size"}
    argv = ["python", "benchmarks/vtab.py", "--checkpoint", checkpoint, "--data-root", data_root]
    for key, value in evaluation.options.items():
        if key in flags:
            argv += [flags[key], str(value)]
        elif key == "options":
            for sub, v in value.items():
                argv += ["--set", f"{sub}={_flow(v)}"]
        else:
            raise VitsslError(f"vtab option '{key}' has no benchmarks/vtab.py flag")
    return argv


def run_hint(recipe: Recipe) -> list[str]:
    """Shell lines that run a recipe (RUN: a run directory or checkpoint)."""
    if recipe.kind == "pretrain":
        shipped = recipe.path.parent == configs_dir()
        name = recipe.name if shipped else shlex.quote(str(recipe.path))
        return [f"vitssl pretrain --config {name}"]
    evaluation = load_evaluation(recipe)
    if evaluation.evaluator == "vtab":  # the suite, or one task through vitssl eval
        return [shlex.join(vtab_benchmark_command(evaluation)),
                shlex.join(eval_command(evaluation, data="vtab1k:VTAB1K_DIR/TASK"))]
    return [shlex.join(eval_command(evaluation))]
