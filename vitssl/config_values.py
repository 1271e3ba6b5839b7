"""Every number in a run's configuration: finite, and inside the range its key allows.

Checked when a configuration is resolved (``load_config``, ``pretrain``), before anything
is built, so ``--set train.lr=nan`` is one line rather than an optimiser's traceback after
the data has been opened. Numbers inside option mappings (``objective.options``,
``data.options``, ...) are checked finite here; their ranges are their plugin's to check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vitssl.errors import VitsslError


@dataclass(frozen=True)
class Range:
    """An interval of allowed values; ``None`` ends are unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    words: tuple[str, ...] = ()  # what the key accepts besides numbers, e.g. "auto"

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            text = "a number"
        elif self.high is None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = (f"in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        return " or ".join([text, *(f"'{word}'" for word in self.words)])


ANY = Range()
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1, high_open=True)  # a probability or rate below 1
SCALE = Range(0, 1, low_open=True)  # a share of something, e.g. of an image's area

# Every numeric field of the config dataclasses (tests/test_config_values.py fails when a
# new one is missing here); a tuple field's range applies to each of its numbers.
RANGES: dict[str, Range] = {
    "model.image_size": AT_LEAST_1, "model.depth": AT_LEAST_1,
    "model.in_chans": Range(1, words=("auto",)), "data.channels": NON_NEGATIVE,
    "model.drop_rate": FRACTION, "model.attn_drop_rate": FRACTION,
    "model.drop_path_rate": FRACTION,
    "data.num_workers": Range(0, words=("auto",)), "data.mean": Range(words=("auto",)),
    "data.std": Range(0, low_open=True, words=("auto",)),
    "data.crop_scale": SCALE, "data.crop_ratio": POSITIVE, "data.translate": FRACTION,
    "train.steps": AT_LEAST_1, "train.batch_size": AT_LEAST_1, "train.accum_steps": AT_LEAST_1,
    "train.lr": NON_NEGATIVE, "train.min_lr": NON_NEGATIVE,
    "train.weight_decay": NON_NEGATIVE, "train.betas": FRACTION,
    "train.warmup_steps": NON_NEGATIVE, "train.grad_clip": NON_NEGATIVE, "train.seed": ANY,
    "train.checkpoint_every": AT_LEAST_1, "train.keep_checkpoints": AT_LEAST_1,
    "train.log_every": AT_LEAST_1,
    "train.max_rollbacks": NON_NEGATIVE,
    "monitor.every": AT_LEAST_1, "monitor.images": Range(2), "monitor.probe_every": AT_LEAST_1,
    "monitor.probe_train": AT_LEAST_1, "monitor.probe_test": AT_LEAST_1,
    "monitor.patience": AT_LEAST_1, "monitor.min_rankme_ratio": Range(0, 1),
    "monitor.min_spread": Range(0, 1), "monitor.max_entropy_ratio": Range(0, 1),
    "summary_eval.max_train": AT_LEAST_1, "summary_eval.max_test": AT_LEAST_1,
}


def _numbers(value: Any) -> list[float]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def check_finite(values: dict[str, Any], prefix: str = "") -> None:
    """Refuse, naming the key, a NaN or infinity anywhere in a (nested) mapping of settings."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            check_finite(value, f"{name}.")
        elif any(not math.isfinite(v) for v in _numbers(value)):
            raise VitsslError(f"{name} must be a finite number, got {value!r}")


def check_values(flat: dict[str, Any]) -> None:
    """Refuse a non-finite or out-of-range number in a flattened config (``flatten(to_dict)``)."""
    check_finite(flat)
    for key, allowed in RANGES.items():
        value = flat.get(key)
        word = isinstance(value, str) and value not in allowed.words
        if word or any(v not in allowed for v in _numbers(value)):
            raise VitsslError(f"{key} must be {allowed}, got {value!r}")
