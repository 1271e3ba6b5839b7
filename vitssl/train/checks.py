"""What a run's configuration must satisfy before anything is built."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from vitssl.config import Config, config_from_dict, flatten, image_hw, to_dict
from vitssl.data.pipeline import validate_data_config
from vitssl.errors import VitsslError
from vitssl.train import fsdp

# train.precision -> autocast dtype (None: plain fp32)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# What may change when a run is resumed; everything else must match its config.yaml.
RESUMABLE_CHANGES = ("out", "train.steps", "train.device", "train.log_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "data.num_workers",
                     "train.activation_checkpointing", "train.compile",
                     "summary_eval.", "log.", "model.init", "monitor.", "train.on_nonfinite",
                     "train.max_rollbacks")  # model.init: how it began
ON_NONFINITE = ("stop", "rollback")


def micro_batch_size(cfg: Config, world_size: int) -> int:
    """Check the train section's settings; the per-rank micro-batch size."""
    tc = cfg.train
    if tc.precision not in PRECISIONS:
        raise VitsslError(f"unknown train.precision '{tc.precision}'; accepted: "
                          f"{', '.join(PRECISIONS)}")
    if tc.strategy not in fsdp.STRATEGIES:
        raise VitsslError(f"unknown train.strategy '{tc.strategy}'; accepted: "
                          f"{', '.join(fsdp.STRATEGIES)}")
    share = world_size * tc.accum_steps
    if tc.batch_size % share:
        raise VitsslError(f"train.batch_size {tc.batch_size} must be divisible by "
                          f"world size x accum_steps = {share}")
    if tc.on_nonfinite not in ON_NONFINITE:
        raise VitsslError(f"train.on_nonfinite must be one of {', '.join(ON_NONFINITE)}, got "
                          f"{tc.on_nonfinite!r}")
    image_hw(cfg.model.image_size)
    validate_data_config(cfg.data)
    return tc.batch_size // share


def _as_flag(value: object) -> str:
    """``value`` as a ``--set`` value that parses back to it (no spaces, no needless quotes)."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value, separators=(",", ":"))


def check_resumable(cfg: Config, run_dir: Path, requested: Config | None = None) -> None:
    """Refuse to resume a run with a config that changes what its checkpoints hold.

    ``requested``: the config as asked for, before the data and the objective
    filled in its unset keys. A key the run's config.yaml does not record (a run
    made before the key existed) matches only when ``requested`` sets it.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    before = flatten(to_dict(config_from_dict(yaml.safe_load(path.read_text()) or {})))
    now = flatten(to_dict(cfg))
    asked = flatten(to_dict(requested)) if requested is not None else {}
    keys = [key for key in sorted(set(before) | set(now))
            if before.get(key) != now.get(key) and not key.startswith(RESUMABLE_CHANGES)
            and not (before.get(key) is None and asked.get(key) is not None)]
    if keys:
        changed = "; ".join(f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in keys)
        # A run made by an older version can differ by defaults no flag asked for: say how
        # to restore its values rather than only "drop those flags".
        restore = " ".join(f"--set {key}={_as_flag(before[key])}" for key in keys
                           if before.get(key) is not None)
        unrecorded = ", ".join(key for key in keys if before.get(key) is None)
        how = [f"pass {restore}"] if restore else []
        if unrecorded:
            how.append(f"set {unrecorded} (not recorded in its config.yaml) to what it ran with")
        raise VitsslError(f"cannot resume {run_dir} with a changed config ({changed}); to "
                          f"resume it as it was {' and '.join(how)}, or start a new run with "
                          f"another --out")
