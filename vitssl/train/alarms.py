"""Alarms that say what to change, read from a run's records (``metrics.jsonl``) alone, so a
resumed run raises exactly the alarms an uninterrupted one does.

Each rule sees the records up to a health check (step records, the checks' values and the
alarms already raised) and returns a message or None; each alarm is raised once per run.
Thresholds: ``monitor.*`` (measured on digits runs in benchmarks/RESULTS.md, "Monitor").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vitssl.config import MonitorConfig

TEACHER_FIXES = ("for a self-distillation teacher: a smaller update mass "
                 "(objective.options.update_mass, or momentum nearer 1), a lower teacher "
                 "temperature (objective.options.teacher_temp), sinkhorn-knopp centring or "
                 "objective.options.recipe=auto; for any objective: a lower train.lr or a "
                 "longer train.warmup_steps")
LOSS_STUCK_CHANGE = 0.01  # the loss moved less than 1 % from its first logged value


@dataclass(frozen=True)
class Context:
    """What the rules know besides the records."""

    cfg: MonitorConfig
    width: int  # the feature width D
    chance: float | None = None  # the probe's chance accuracy (%), when it runs


Records = list[dict[str, Any]]


def checks(records: Records) -> Records:
    """The records of health checks (those with RankMe), oldest first."""
    return [r for r in records if "rankme" in r]


def _collapse(records: Records, ctx: Context) -> str | None:
    last = checks(records)[-1]
    spread = last["feature_std"] * math.sqrt(ctx.width)
    if last["rankme_ratio"] >= ctx.cfg.min_rankme_ratio and spread >= ctx.cfg.min_spread:
        return None
    return (f"features collapsing: RankMe {last['rankme']:.1f} ({last['rankme_ratio']:.3f} of "
            f"its largest), spread {spread:.3f} of a uniform sphere's, cosine between images "
            f"{last['feature_cos']:.3f}; different images get nearly the same features. "
            f"Try {TEACHER_FIXES}")


def _teacher_entropy(records: Records, ctx: Context) -> str | None:
    recent = checks(records)[-ctx.cfg.patience:]
    ratios = [r.get("teacher_entropy_ratio") for r in recent]
    if len(recent) < ctx.cfg.patience or None in ratios:
        return None
    mean = sum(ratios) / len(ratios)
    if mean < ctx.cfg.max_entropy_ratio:
        return None
    return (f"the teacher's output entropy has averaged {mean:.1%} of ln K (uniform "
            f"targets) over the last {len(recent)} checks: its targets hardly depend on the "
            f"image, so little is distilled. Try {TEACHER_FIXES}")


def _loss_stuck(records: Records, ctx: Context) -> str | None:
    steps = [r for r in records if "loss" in r]
    done = checks(records)
    if len(done) < ctx.cfg.patience + 1 or not steps:
        return None
    first, now = steps[0]["loss"], done[-1]["loss"]
    if abs(now - first) > LOSS_STUCK_CHANGE * max(abs(first), 1e-8):
        return None
    return (f"the loss ({now:.4f}) is within {LOSS_STUCK_CHANGE:.0%} of its first value "
            f"({first:.4f}) after {len(done)} checks: nothing is being learned. Try a higher "
            f"train.lr or a shorter train.warmup_steps; if features collapse too, {TEACHER_FIXES}")


def _probe_chance(records: Records, ctx: Context) -> str | None:
    probes = [v for r in checks(records) for k, v in r.items() if k.startswith("probe_knn")]
    if ctx.chance is None or not probes or probes[-1] > 1.5 * ctx.chance:
        return None
    return (f"the k-NN probe ({probes[-1]:.1f} %) is at chance ({ctx.chance:.1f} %): the "
            f"features hold nothing about the classes. Try {TEACHER_FIXES}")


RULES: dict[str, Callable[[Records, Context], str | None]] = {
    "collapse": _collapse, "teacher_entropy": _teacher_entropy, "loss_stuck": _loss_stuck,
    "probe_chance": _probe_chance}


def raised(records: Records, ctx: Context) -> list[tuple[str, str]]:
    """(name, message) of each alarm the newest check raises that no earlier one did."""
    before = {r["alarm"] for r in records if "alarm" in r}
    found = [(name, rule(records, ctx)) for name, rule in RULES.items() if name not in before]
    return [(name, message) for name, message in found if message]
