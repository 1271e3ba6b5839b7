"""Checkpoints: safetensors weights + a tensors-only training state, written atomically.

``RUN/checkpoints/step-00000100/`` holds ``model.safetensors`` (the objective's state dict;
metadata: resolved config, exports, options), ``state.pt`` (optimizer, scheduler, RNG, step;
read with ``weights_only=True``) and, for FSDP runs, ``optimizer/`` (the sharded optimizer
state). It is written under a temporary name and renamed when complete; FSDP weights are
gathered to rank 0 first, so the weights file is the same for any strategy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vitssl.config import Config, config_from_dict, to_dict
from vitssl.errors import VitsslError
from vitssl.models import VisionTransformer, build_encoder
from vitssl.objective import Objective, build_objective
from vitssl.plugins import get_registry

WEIGHTS = "model.safetensors"
STATE = "state.pt"
OPTIMIZER = "optimizer"
ENCODER_PREFIX = "encoder."
_STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, directory), oldest first."""
    root = Path(run_dir) / "checkpoints"
    return sorted((int(match[1]), child) for child in (root.iterdir() if root.is_dir() else ())
                  if (match := _STEP_DIR.match(child.name))
                  and (child / WEIGHTS).is_file() and (child / STATE).is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a checkpoint's weights or training state do not read back (a disk that filled up, a
    copy cut short), or None when both do."""
    try:
        read_metadata(ckpt / WEIGHTS)
        load_training_state(ckpt)
    except Exception as exc:  # noqa: BLE001 - any read failure makes it unusable
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def readable_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that reads back completely and its training state (None: the run
    has none). Newer ones that do not are named on stderr; none readable is one line."""
    skipped = []
    for _, ckpt in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(ckpt)
        if problem is not None:
            skipped.append(f"{ckpt.name}: {problem}")
            continue
        for line in skipped:
            print(f"warning: skipped checkpoint {line}", file=sys.stderr)
        return ckpt, load_training_state(ckpt)
    if skipped:
        raise VitsslError(f"no checkpoint of '{run_dir}' reads back completely: "
                          f"{'; '.join(skipped)}")
    return None


def step_dir(run_dir: str | Path, step: int) -> Path:
    """Where checkpoint ``step`` lives once complete."""
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def staging_dir(run_dir: str | Path, step: int, fresh: bool = False) -> Path:
    """Where checkpoint ``step`` is assembled before it is renamed into place (``fresh``:
    emptied first; other ranks may then write into it)."""
    final = step_dir(run_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if fresh:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(run_dir: str | Path, step: int, module: torch.nn.Module, cfg: Config,
                    state: dict[str, Any], keep: int = 2, *,
                    weights: dict[str, torch.Tensor] | None = None,
                    staged: bool = False, options: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoints/step-NNNNNNNN`` atomically and keep the newest ``keep``.

    ``weights`` replaces ``module.state_dict()`` (FSDP: the gathered full state);
    ``staged``: the staging directory already holds what other ranks wrote.
    """
    final = step_dir(run_dir, step)
    tmp = staging_dir(run_dir, step, fresh=not staged)
    source = module.state_dict() if weights is None else weights
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in source.items()}
    metadata = {"format": "vitssl", "step": str(step), "config": json.dumps(to_dict(cfg)),
                "exports": json.dumps(module.exports() if isinstance(module, Objective)
                                      else {"encoder": "encoder"}),  # a plain holder
                "objective_options": json.dumps(options or {})}
    save_file(tensors, str(tmp / WEIGHTS), metadata=metadata)
    torch.save({**state, "step": step}, tmp / STATE)
    for path in (tmp / WEIGHTS, tmp / STATE):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # the same step written again after a resume
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        final.rename(old)
        shutil.rmtree(old)
    tmp.rename(final)
    for _, stale in list_checkpoints(run_dir)[:-max(1, keep)]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def remove_partial(run_dir: str | Path) -> None:
    """Delete temporary directories left by a run killed while saving."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(child, ignore_errors=True)


def load_training_state(ckpt: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint directory (tensors and plain containers only)."""
    return torch.load(Path(ckpt) / STATE, map_location="cpu", weights_only=True)


def weights_file(path: str | Path) -> Path:
    """Resolve a run directory, checkpoint directory or weights file to the weights file."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".safetensors":
            raise VitsslError(f"checkpoint '{p}' is not a .safetensors file; give a run "
                              f"directory, a checkpoint directory or its {WEIGHTS}")
        return p
    if (p / WEIGHTS).is_file():
        return p / WEIGHTS
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is not None:
            return latest / WEIGHTS
        raise VitsslError(f"no complete checkpoint in '{p}' (expected "
                          f"{p / 'checkpoints'}/step-*/{WEIGHTS})")
    raise VitsslError(f"checkpoint not found: '{p}'; give a run directory, a checkpoint "
                      f"directory or a {WEIGHTS} file")


# Metadata values written as JSON, and the type each must decode to.
JSON_METADATA = {"config": dict, "exports": dict, "objective_options": (dict, type(None)),
                 "step": int}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The safetensors metadata of a run's, checkpoint's or file's weights, its JSON values
    (:data:`JSON_METADATA`) decoded; anything unreadable is one line naming the file."""
    file = weights_file(path)
    try:
        with safe_open(str(file), framework="pt") as fh:
            metadata: dict[str, Any] = dict(fh.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise VitsslError(f"'{file}' is not a readable safetensors file: {exc}") from None
    for key, kind in JSON_METADATA.items():
        if key not in metadata:
            continue
        try:
            metadata[key] = json.loads(metadata[key])
        except json.JSONDecodeError as exc:
            raise VitsslError(f"'{file}' is damaged: its metadata '{key}' is not valid JSON "
                              f"({exc.msg} at character {exc.pos})") from None
        if not isinstance(metadata[key], kind):
            raise VitsslError(f"'{file}' is damaged: its metadata '{key}' holds "
                              f"{type(metadata[key]).__name__}, not the expected value")
    return metadata


def checkpoint_config(metadata: dict[str, Any], file: str | Path) -> Config:
    """The run config recorded in a checkpoint's metadata; one line naming ``file`` if unusable."""
    if "config" not in metadata:
        raise VitsslError(f"'{file}' carries no vitssl config in its metadata; it was not "
                          f"written by vitssl pretrain")
    try:
        return config_from_dict(metadata["config"])
    except VitsslError as exc:
        raise VitsslError(f"'{file}' records a config this version cannot use: {exc}") from None


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Config]:
    file = weights_file(path)
    metadata = read_metadata(file)
    cfg = checkpoint_config(metadata, file)
    return load_file(str(file)), metadata, cfg


def submodule_state(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors of submodule ``name`` of a state dict, named as in the submodule."""
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _exports(metadata: dict[str, str]) -> dict[str, str]:
    """What the checkpoint's objective exports, by role (older checkpoints: two keys)."""
    if "exports" in metadata:
        return metadata["exports"]
    out = {"encoder": metadata.get("encoder", ENCODER_PREFIX.rstrip("."))}
    if "pre_logits" in metadata:
        out["pre_logits"] = metadata["pre_logits"]
    return out


def _rebuilt_objective(cfg: Config, metadata: dict[str, str]) -> Objective | None:
    """The checkpoint's objective, rebuilt from the registry (None when it is not installed)."""
    options = metadata.get("objective_options")
    options = cfg.objective.options if options is None else options
    try:
        factory = get_registry().get("objectives", cfg.objective.name)
        return build_objective(cfg.objective.name, factory, build_encoder(cfg.model), options)
    except VitsslError as exc:
        print(f"warning: the checkpoint's feature heads are not attached: {exc}",
              file=sys.stderr)
        return None


def load_encoder(path: str | Path,
                 device: str | torch.device = "cpu") -> tuple[VisionTransformer, Config]:
    """(encoder in eval mode, its config) from a run directory, checkpoint directory or file:
    the one the objective exports (DINO's teacher), other exports (the supervised pre-logits
    head) rebuilt through the objective's factory and attached by role (``.pre_logits``)."""
    tensors, metadata, cfg = _read(path)
    encoder = build_encoder(cfg.model)
    exports = _exports(metadata)
    state = submodule_state(tensors, exports["encoder"])
    if not state:
        raise VitsslError(f"checkpoint '{path}' holds no '{exports['encoder']}.*' weights")
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VitsslError(f"checkpoint '{path}' does not match its model config "
                          f"{cfg.model.name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    heads = {role: name for role, name in exports.items()
             if role != "encoder" and submodule_state(tensors, name)}
    objective = _rebuilt_objective(cfg, metadata) if heads else None
    for role, name in heads.items() if objective is not None else ():
        head = objective.get_submodule(name)
        head.load_state_dict(submodule_state(tensors, name))
        setattr(encoder, role.replace("-", "_"), head)
    return encoder.to(device).eval(), cfg
