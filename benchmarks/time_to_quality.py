"""Time to quality: the training seconds at which an objective first reaches a reference's
final quality, and its speed-up over the reference (benchmarks/ssl_quality.py's headline).

A curve is a list of points ``[train_s, knn_top1, linear_top1, steps]`` (older curves
hold only the first two or three), all scored on the same curve subset. For each probe the
target is the reference objective's value at its last point; an objective's seconds
are those of its first point at or above the target (so they are exact to the curve's
spacing, an upper bound), and its speed-up is the reference's own seconds to that
target over the objective's (> 1: faster than the reference).
"""

from __future__ import annotations

from typing import Any

PROBES = {"knn": 1, "linear": 2}  # probe -> index in a curve point
STEPS = 3  # index of the steps done


def first_reach(curve: list[list[float]], index: int, target: float) -> list[float] | None:
    """The first point whose value at ``index`` is >= ``target``."""
    return next((point for point in curve if len(point) > index and point[index] >= target),
                None)


def time_to_quality(curves: dict[str, list[list[float]]], reference: str) -> dict[str, Any]:
    """``{"reference", "targets": {probe: value}, "rows": {objective: {probe_s, probe_x,
    probe_steps}}}``; an empty dict when ``reference`` has no curve."""
    if reference not in curves or not curves[reference]:
        return {}
    last = curves[reference][-1]
    targets = {p: float(last[i]) for p, i in PROBES.items() if len(last) > i}
    rows: dict[str, dict[str, float | None]] = {}
    for probe, target in targets.items():
        own = first_reach(curves[reference], PROBES[probe], target)
        for name, curve in curves.items():
            point = first_reach(curve, PROBES[probe], target)
            seconds = None if point is None else float(point[0])
            rows.setdefault(name, {})[f"{probe}_s"] = seconds
            rows[name][f"{probe}_x"] = (float(own[0]) / seconds if seconds and own is not None
                                        else None)
            rows[name][f"{probe}_steps"] = (int(point[STEPS]) if point is not None
                                            and len(point) > STEPS else None)
    return {"reference": reference, "targets": targets, "rows": rows}


def markdown(ttq: dict[str, Any], train_s: dict[str, float]) -> list[str]:
    """The time-to-quality table's lines (empty without a reference)."""
    if not ttq:
        return []
    targets = ttq["targets"]
    named = ", ".join(f"{probe} {value:.1f}" for probe, value in targets.items())
    lines = [f"Time to quality: training seconds to reach {ttq['reference']}'s final "
             f"curve-subset top-1 ({named}); × = {ttq['reference']}'s seconds / these "
             f"(> 1 is faster).", "",
             "| objective | " + " | ".join(f"{p} s | {p} ×" for p in targets)
             + " | train s |", "|---" * (2 * len(targets) + 2) + "|"]
    for name, row in ttq["rows"].items():
        cells = []
        for probe in targets:
            seconds, speed, steps = (row[f"{probe}_s"], row[f"{probe}_x"],
                                     row.get(f"{probe}_steps"))
            cells += ["not reached" if seconds is None else f"{seconds:.0f}"
                      + ("" if steps is None else f" ({steps} steps)"),
                      "–" if speed is None else f"{speed:.2f}×"]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {train_s.get(name, float('nan')):.0f} |")
    return [*lines, ""]


def mark(ax: Any, ttq: dict[str, Any], probe: str, colours: dict[str, str]) -> None:
    """Draw the reference's final ``probe`` value and each objective's first reach of it."""
    if not ttq or probe not in ttq["targets"]:
        return
    target = ttq["targets"][probe]
    ax.axhline(target, color="black", linewidth=0.6, alpha=0.5)
    for name, row in ttq["rows"].items():
        if row[f"{probe}_s"] is not None:
            ax.plot([row[f"{probe}_s"]], [target], marker="x", markersize=9,
                    color=colours.get(name, "black"))
