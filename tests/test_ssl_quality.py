"""benchmarks/ssl_quality.py --quick: every row, column and output file of the quality table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ssl_quality.py"
PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_run_writes_table_chart_and_curve(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--objectives",
                           "masked-patch,dino num_local=0 train.lr=0.0005", "--reference",
                           "masked-patch", "--data",
                           "builtin:digits", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    entry = results["tasks"]["builtin:digits"]
    rows = entry["rows"]
    dino = "dino num_local=0 train.lr=0.0005"  # a variant: the objective's own and any key
    assert list(rows) == ["masked-patch", dino, "random init", "raw pixels"]
    trained = (tmp_path / "runs" / "builtin-digits-dino-num_local-0-train.lr-0.0005"
               / "config.yaml").read_text()
    assert "num_local: 0" in trained and "lr: 0.0005" in trained
    for name in ("fewshot_10shot_top1", "fewshot_25shot_top1", "knn_k20_top1", "linear_top1"):
        assert all(0 <= row[name] <= 100 for row in rows.values())
    assert "finetune_top1" in rows[dino] and "finetune_top1" not in rows["raw pixels"]
    assert rows[dino]["finetune_gain"] == rows[dino]["finetune_top1"] - \
        rows["random init"]["finetune_top1"]
    # the budget is kept: training stops at it (one step of slack) and never runs past plan
    for name in ("masked-patch", dino):
        row = rows[name]
        assert row["steps"] <= row["planned_steps"]
        assert row["train_s"] <= results["budget_s"] + 3 * row["timing_s_per_step"] + 1.0
        times = [point[0] for point in entry["curves"][name]]
        assert times[0] == 0.0 and len(times) >= 2 and times == sorted(times)
        points = entry["curves"][name]  # time, k-NN, linear, steps done
        assert all(len(point) == 4 for point in points) and points[0][3] == 0
        assert points[-1][3] == row["steps"] and [p[3] for p in points] == sorted(
            p[3] for p in points)
    ttq = entry["time_to_quality"]
    assert ttq["reference"] == "masked-patch" and set(ttq["targets"]) == {"knn", "linear"}
    for probe in ("knn", "linear"):  # the reference reaches its own final value: 1x (or at 0 s)
        own = ttq["rows"]["masked-patch"]
        assert own[f"{probe}_x"] == 1 or (own[f"{probe}_s"] == 0 and own[f"{probe}_x"] is None)
    assert ttq["targets"]["knn"] == entry["curves"]["masked-patch"][-1][1]
    table = (tmp_path / "results.md").read_text()
    assert "Time to quality" in table and "| knn s | knn × |" in table
    assert "| raw pixels |" in table and "| FT gain |" in table and "| linear |" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == PNG
    assert (tmp_path / "curve.png").read_bytes()[:8] == PNG


def _quick(out, *args):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data", "builtin:digits",
                           "--out", str(out), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow  # the quick run above covers the script end to end
def test_steps_mode_trains_every_objective_for_the_same_steps_and_rescores(tmp_path):
    results = _quick(tmp_path, "--steps", "5", "--objectives", "mae")
    row = results["tasks"]["builtin:digits"]["rows"]["mae"]
    assert results["steps"] == 5 and results["budget_s"] is None
    assert row["steps"] == row["planned_steps"] == 5 and row["timing_s_per_step"] is None
    assert "5 steps per objective" in (tmp_path / "results.md").read_text()
    # --rescore scores the saved checkpoint: the exported encoder the first pass scored
    rescored = _quick(tmp_path, "--rescore")
    assert rescored["tasks"]["builtin:digits"]["rows"]["mae"] == row
    assert rescored["steps"] == 5


def test_time_to_quality_is_the_first_reach_of_the_references_final_value():
    sys.path.insert(0, str(SCRIPT.parent))
    from time_to_quality import time_to_quality

    curves = {"ref": [[0, 10, 20, 0], [100, 50, 60, 40], [200, 70, 80, 80],
                      [300, 65, 75, 120]],
              "fast": [[0, 10, 20, 0], [30, 66, 70, 20], [60, 71, 76, 40], [90, 90, 90, 60]],
              "slow": [[0, 10, 20], [300, 60, 79]]}  # an older curve: no steps recorded
    ttq = time_to_quality(curves, "ref")
    assert ttq["targets"] == {"knn": 65, "linear": 75}
    assert ttq["rows"]["ref"] == {"knn_s": 200, "knn_x": 1.0, "knn_steps": 80,
                                  "linear_s": 200, "linear_x": 1.0, "linear_steps": 80}
    assert ttq["rows"]["fast"] == {"knn_s": 30, "knn_x": 200 / 30, "knn_steps": 20,
                                   "linear_s": 60, "linear_x": 200 / 60, "linear_steps": 40}
    assert ttq["rows"]["slow"] == {"knn_s": None, "knn_x": None, "knn_steps": None,
                                   "linear_s": 300, "linear_x": 200 / 300,
                                   "linear_steps": None}
    assert time_to_quality(curves, "absent") == {}
