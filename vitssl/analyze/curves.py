"""Training curves from a run's ``metrics.jsonl``: every logged quantity against step."""

from __future__ import annotations

import math
from pathlib import Path

from vitssl.errors import VitsslError
from vitssl.train.runlog import METRICS, read_metrics

# Logged but not a training quantity: throughput depends on the machine, not the model;
# a rollback record's counters.
NOT_PLOTTED = ("step", "images_per_s", "rollback", "bad_step")
# First the loss, then the monitor's health metrics and probe beside it (vitssl.train.monitor).
ORDER = ("loss", "rankme", "feature_std", "probe_knn_k20_top1", "lr", "rankme_ratio",
         "feature_cos")


def read_curves(run_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{name: (steps, values)} for loss, lr and every other numeric per-step metric."""
    records = read_metrics(run_dir)
    if not records:
        raise VitsslError(f"no training records in '{Path(run_dir) / METRICS}'")
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for key, value in record.items():
            if key in NOT_PLOTTED or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                steps, values = curves.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    first = [k for k in ORDER if k in curves]
    return {k: curves[k] for k in first + sorted(set(curves) - set(first))}


def summarise_curves(curves: dict[str, tuple[list[int], list[float]]]) -> dict[str, dict]:
    """Per metric: points, first and last (step, value), min and max."""
    return {k: {"points": len(v), "first_step": s[0], "first": v[0], "last_step": s[-1],
                "last": v[-1], "min": min(v), "max": max(v)}
            for k, (s, v) in curves.items()}
