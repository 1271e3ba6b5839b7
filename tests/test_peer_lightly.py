"""benchmarks/peer_lightly.py: the lightly MAE peer trains, and the comparison's arithmetic."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_lightly.py"
needs_lightly = pytest.mark.skipif(importlib.util.find_spec("lightly") is None,
                                   reason="lightly not installed (the peers extra)")


def _module():
    spec = importlib.util.spec_from_file_location("peer_lightly", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_quality_interpolates_the_first_crossing():
    peer = _module()
    curve = [(0.0, 10.0), (10.0, 30.0), (20.0, 50.0), (30.0, 40.0)]
    assert peer.time_to(curve, 40.0) == pytest.approx(15.0)
    assert peer.time_to(curve, 60.0) is None
    assert peer.at_time(curve, 5.0) == pytest.approx(20.0)


@needs_lightly
def test_smoke_run_on_digits_writes_both_sides(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", "builtin:digits",
                           "--image-size", "16", "--steps", "4", "--chunk", "2",
                           "--probe-every", "2", "--batch-size", "8", "--probe-train", "100",
                           "--probe-test", "100", "--set", "model.depth=1",
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["curves"]) == {"vitssl", "lightly"}
    assert all(len(c) == 3 for c in result["curves"].values())  # step 0, 2 and 4
    assert all(t > 0 for t in result["train_s"].values())
    assert "time-to-quality" in (tmp_path / "results.md").read_text()
