"""VTAB-1k results: task groups, means, reference rows, and the table as text / Markdown / JSON.

A results document is the dict ``benchmarks/vtab.py`` writes as JSON: the run's settings,
``tasks`` (name -> status "ok" with top-1 and the chosen setting, or "failed" with the error)
and :func:`summarize`'s ``summary`` (the VTAB score: the plain mean of top-1 over tasks).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vitssl.data.vtab1k import VTAB_GROUPS
from vitssl.errors import VitsslError

GROUP_TITLES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured",
                "other": "Other (not a VTAB task)"}
GROUP_ORDER = ("natural", "specialized", "structured", "other")

# Embedded stand-ins for VTAB tasks (same label definitions, rendered here).
EMBEDDED_GROUPS = {"dsprites-loc": "structured", "dsprites-ori": "structured"}


# Published VTAB-1k results quoted in PAPER.md (label, 19-task mean, source); no per-task numbers.
REFERENCES = (("ViT-B/16 IN-21k, full fine-tuning", 65.57, "VPT tables, 19-task mean"),
              ("ViT-B/16 IN-21k, linear probe", 52.94, "VPT tables, 19-task mean"))


def task_group(name: str) -> str:
    """The VTAB group of a task folder name or embedded task; ``"other"`` if it has none."""
    for group, tasks in VTAB_GROUPS.items():
        if name in tasks:
            return group
    return EMBEDDED_GROUPS.get(name, "other")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Group means, the plain mean over tasks and the mean of group means (successful tasks).

    Tasks of the ``"other"`` group (not VTAB tasks, e.g. digits) get their own group
    row but take no part in the two VTAB means.
    """
    done = {name: r for name, r in tasks.items() if r.get("status") == "ok"}
    groups: dict[str, dict[str, Any]] = {}
    for group in GROUP_ORDER:
        members = [name for name in done if done[name]["group"] == group]
        if members:
            groups[group] = {"mean": _mean([done[n]["top1"] for n in members]),
                             "tasks": members}
    vtab = {g: v for g, v in groups.items() if g != "other"}
    return {"groups": groups,
            "mean_over_tasks": _mean([done[n]["top1"] for g in vtab.values()
                                      for n in g["tasks"]]),
            "mean_of_group_means": _mean([g["mean"] for g in vtab.values()]),
            "num_tasks": sum(len(g["tasks"]) for g in vtab.values()),
            "num_failed": sum(1 for r in tasks.values() if r.get("status") == "failed")}


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.2f}"


def _ordered(tasks: dict[str, dict[str, Any]]) -> list[str]:
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    return sorted(tasks, key=lambda n: rank.get(tasks[n].get("group", "other"), 9))  # stable


def table_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one per task, then group means, overall means and reference rows."""
    tasks, summary = doc["tasks"], doc["summary"]
    header = ["task", "group", "top-1 (%)", "chosen setting", "val200 top-1", "time (s)"]
    rows = []
    for name in _ordered(tasks):
        r = tasks[name]
        group = GROUP_TITLES.get(r.get("group", "other"), r.get("group", ""))
        if r.get("status") != "ok":
            rows.append([name, group, "failed", r.get("error", "")[:60], "", ""])
            continue
        val = r.get("val_top1", {}).get(r.get("setting_name", ""))
        rows.append([name, group, _fmt(r["top1"]), r.get("setting_name", ""), _fmt(val),
                     f"{r.get('time_s', 0.0):.0f}"])
    for group, g in summary["groups"].items():
        rows.append([f"mean: {GROUP_TITLES.get(group, group)}", f"{len(g['tasks'])} task(s)",
                     _fmt(g["mean"]), "", "", ""])
    n, k = summary["num_tasks"], len([g for g in summary["groups"] if g != "other"])
    rows.append([f"mean over {n} task(s) (VTAB score)", "", _fmt(summary["mean_over_tasks"]),
                 "", "", ""])
    rows.append([f"mean of {k} group mean(s)", "", _fmt(summary["mean_of_group_means"]),
                 "", "", ""])
    for label, mean, source in REFERENCES:
        rows.append([f"reference: {label}", "19 tasks", _fmt(mean),
                     f"({source}; per-task not quoted)", "", ""])
    return header, rows


def format_text(doc: dict[str, Any]) -> str:
    """The table as aligned plain text for the terminal."""
    header, rows = table_rows(doc)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
    title = (f"VTAB-1k ({doc['protocol']} protocol, {doc['adapt']}, {doc['image_size']} px) "
             f"— {doc['checkpoint']}")
    return "\n".join([title, line(header), line(["-" * w for w in widths]),
                      *[line(r) for r in rows]])


def format_markdown(doc: dict[str, Any]) -> str:
    """The table as a Markdown document."""
    header, rows = table_rows(doc)
    cell = lambda c: str(c).replace("|", "\\|")
    out = [f"# VTAB-1k: {doc['checkpoint']}", "",
           f"Protocol `{doc['protocol']}`, adaptation `{doc['adapt']}`, "
           f"{doc['image_size']} px. Top-1 on the test split after selecting the setting "
           "on val200 and retraining on train800val200.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def load_document(path: str | Path, *, protocol: str, adapt: str,
                  image_size: int) -> dict[str, Any]:
    """A results file written earlier, checked to be from the same protocol and settings."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VitsslError(f"--resume: cannot read results file {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict):
        raise VitsslError(f"--resume: {path} is not a VTAB results file (no 'tasks' object)")
    wanted = {"protocol": protocol, "adapt": adapt, "image_size": image_size}
    for key, value in wanted.items():
        if doc.get(key) != value:
            raise VitsslError(f"--resume: {path} was written with {key}={doc.get(key)!r}, "
                              f"this run uses {value!r}; pick another --output")
    return doc


def write_document(doc: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Recompute the summary and write ``path`` (JSON) and its ``.md`` twin atomically."""
    doc["summary"] = summarize(doc["tasks"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    md = path.with_suffix(".md")
    for target, text in ((path, json.dumps(doc, indent=2) + "\n"), (md, format_markdown(doc))):
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(target)
    return path, md
