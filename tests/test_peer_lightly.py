"""benchmarks/peer_lightly.py: the lightly peers (mae, dino, moco-v3) train, and the
comparison's arithmetic."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
@pytest.mark.parametrize(("method", "extra"), [
    ("mae", []),
    ("dino", ["--set", "objective.options.out_dim=32"]),
    ("moco-v3", ["--set", "objective.options.hidden_dim=32", "--set",
                 "objective.options.out_dim=16"]),
])
def test_smoke_run_on_digits_writes_both_sides(method, extra, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--method", method,
                           "--data", "builtin:digits",
                           "--image-size", "16", "--steps", "4", "--chunk", "2",
                           "--probe-every", "2", "--batch-size", "8", "--probe-train", "100",
                           "--probe-test", "100", "--set", "model.depth=1", *extra,
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["method"] == method
    assert set(result["curves"]) == {"vitssl", "lightly"}
    assert all(len(c) == 3 for c in result["curves"].values())  # step 0, 2 and 4
    assert all(t > 0 for t in result["train_s"].values())
    table = (tmp_path / "results.md").read_text()
    assert "time-to-quality" in table and f"lightly {method}" in table


@needs_lightly
@pytest.mark.parametrize("method", ["dino", "moco-v3"])
def test_peer_starts_with_its_teacher_equal_to_the_student(method, tmp_path):
    from vitssl.config import load_config
    from vitssl.train import distributed
    from vitssl.train.build import build_run

    peer_lightly = _module()
    cfg = load_config(None, [f"objective.name={method}", "model.depth=1", "model.image_size=16",
                             "train.steps=10", "train.batch_size=8", "train.device=cpu",
                             "summary_eval.enabled=false", f"out={tmp_path}"])
    run = build_run(cfg, distributed.setup("cpu"))
    try:
        model = peer_lightly.Peer(run).model
    finally:
        run.log.close()
    pairs = {"dino": [("student", "teacher"), ("student_head", "teacher_head")],
             "moco-v3": [("backbone", "momentum_backbone"),
                         ("projector", "momentum_projector")]}[method]
    for student, teacher in pairs:
        ours, theirs = getattr(model, student).state_dict(), getattr(model, teacher).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert not any(p.requires_grad for p in getattr(model, teacher).parameters())
