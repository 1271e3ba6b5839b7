"""``torchrun`` with 2 gloo processes matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from vitssl.train.checkpoint import latest_checkpoint, load_encoder
from vitssl.train.summary import random_init_encoder

_ARGS = ["pretrain", "--objective", "masked-patch", "--image-size", "16", "--batch-size", "16",
         "--steps", "4", "--device", "cpu", "--set", "model.depth=1",
         "--set", "train.warmup_steps=2", "--set", "train.log_every=1",
         "--set", "data.augment=false", "--set", "summary_eval.enabled=false"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_gloo_ranks_match_one_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run([sys.executable, "-m", "vitssl", *_ARGS, "--out", str(single)])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          "-m", "vitssl", *_ARGS, "--out", str(ddp)])
    # Rank 0 alone writes the run directory.
    assert len((ddp / "metrics.jsonl").read_text().splitlines()) == 4
    assert [s.name for s in (ddp / "checkpoints").iterdir()] == ["step-00000004"]
    assert _losses(ddp) == pytest.approx(_losses(single), rel=1e-5)
    a, b = _weights(single), _weights(ddp)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    # Both trained: the encoder moved away from the initialisation the run started from.
    encoder, cfg = load_encoder(ddp)
    init = random_init_encoder(cfg).state_dict()
    for key, value in encoder.state_dict().items():
        assert (value - init[key]).abs().max() > 1e-4, key
