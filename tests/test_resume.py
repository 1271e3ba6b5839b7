"""Checkpoints round-trip, load_encoder, and a SIGKILLed run resumed to the same losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import vitssl
from vitssl.config import Config
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_encoder,
    load_training_state,
    save_checkpoint,
)


class _Wrapper(vitssl.Objective):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.encoder = build_encoder(cfg.model)
        self.head = nn.Linear(self.encoder.embed_dim, 5)


def _tiny_cfg() -> Config:
    cfg = Config()
    cfg.model.depth = 1
    cfg.model.image_size = 16
    return cfg


def test_load_encoder_round_trips_run_dir_checkpoint_dir_and_file(tmp_path):
    torch.manual_seed(0)
    cfg = _tiny_cfg()
    module = _Wrapper(cfg)
    opt = torch.optim.AdamW(module.parameters())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, module, cfg, {"optimizer": opt.state_dict()}, keep=2)
    steps = [s for s, _ in list_checkpoints(tmp_path)]
    assert steps == [2, 3]  # keeps the last two
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]

    images = torch.randn(2, 3, 16, 16)
    expected = module.encoder.eval()(images)
    newest = tmp_path / "checkpoints" / "step-00000003"
    for path in (tmp_path, newest, newest / "model.safetensors", str(tmp_path)):
        encoder, loaded_cfg = load_encoder(path)
        assert loaded_cfg.model.depth == 1 and loaded_cfg.model.image_size == 16
        assert not encoder.training
        torch.testing.assert_close(encoder(images), expected, rtol=0, atol=0)
    state = load_training_state(newest)
    assert state["step"] == 3 and "optimizer" in state


def test_load_encoder_ignores_incomplete_checkpoints(tmp_path):
    cfg = _tiny_cfg()
    module = _Wrapper(cfg)
    save_checkpoint(tmp_path, 5, module, cfg, {})
    partial = tmp_path / "checkpoints" / "step-00000009"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"garbage")  # no state.pt: incomplete
    encoder, _ = load_encoder(tmp_path)
    torch.testing.assert_close(encoder.pos_embed, module.encoder.pos_embed)


def test_load_encoder_errors_are_user_errors(tmp_path):
    with pytest.raises(VitsslError, match="not found"):
        load_encoder(tmp_path / "nope")
    with pytest.raises(VitsslError, match="no complete checkpoint"):
        load_encoder(tmp_path)
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(VitsslError, match="safetensors"):
        load_encoder(bad)


# -- a run killed with SIGKILL and resumed repeats the uninterrupted run ----------------------

_TINY = ["--objective", "masked-patch", "--image-size", "16", "--batch-size", "16",
         "--steps", "12", "--device", "cpu", "--set", "model.depth=1",
         "--set", "train.checkpoint_every=2", "--set", "train.log_every=1",
         "--set", "train.warmup_steps=3", "--set", "summary_eval.enabled=false"]


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vitssl", "pretrain", *_TINY, "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_sigkilled_run_resumes_to_the_same_losses(tmp_path):
    resumed = _kill_and_resume(tmp_path)
    assert "fresh draw" not in resumed


@pytest.mark.slow  # every objective's exact resume: test_every_objective.py
def test_sigkilled_dino_run_resumes_teacher_and_centre_bit_for_bit(tmp_path):
    _kill_and_resume(tmp_path, "--objective", "dino", "--set", "objective.options.out_dim=64",
                     "--set", "objective.options.hidden_dim=32", "--set",
                     "objective.options.bottleneck_dim=16", "--set",
                     "objective.options.num_local=2")


def _noise_shards(root: Path, num_shards: int, per_shard: int) -> str:
    """Unlabelled shards of random 20x20 PNGs (every sample changes the loss)."""
    import io

    import numpy as np
    from PIL import Image
    from webdataset import TarWriter

    rng = np.random.default_rng(0)
    for s in range(num_shards):
        with open(root / f"shard-{s}.tar", "wb") as fh, TarWriter(fh, encoder=False) as tar:
            for i in range(per_shard):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(png, "PNG")
                tar.write({"__key__": f"s{s}-{i:03d}", "png": png.getvalue()})
    return f"wds:{root}/shard-{{0..{num_shards - 1}}}.tar"


def test_sigkilled_wds_run_continues_the_stream(tmp_path):
    """Two workers, a shuffle buffer and checkpoints mid-shard: the stream picks up exactly."""
    (tmp_path / "shards").mkdir()
    spec = _noise_shards(tmp_path / "shards", num_shards=4, per_shard=12)
    resumed = _kill_and_resume(tmp_path, "--data", spec, "--set", "data.num_workers=2",
                               "--set", "data.options.shuffle_buffer=8")
    assert "wds:" not in resumed  # no note: neither a fresh draw nor a shard boundary


def _kill_and_resume(tmp_path: Path, *extra: str) -> str:
    """Run to the end, and again killed after 5 steps and resumed; compare; resumed stderr."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    first = subprocess.run(_cli(full, *extra), env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr

    proc = subprocess.Popen(_cli(killed, *extra), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            done = len(_losses(killed)) if (killed / "metrics.jsonl").is_file() else 0
            if done >= 5 or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    steps_before = [s for s, _ in list_checkpoints(killed)]
    assert steps_before and max(steps_before) < 12

    resumed = subprocess.run(_cli(killed, *extra, "--resume"), env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step-" in resumed.stderr
    assert _losses(killed) == _losses(full)  # every step, bit for bit
    assert [s for s, _ in _losses(full)] == list(range(1, 13))
    a, b = (load_file(str(latest_checkpoint(run) / "model.safetensors")) for run in (full, killed))
    assert a.keys() == b.keys()
    for key in a:  # every tensor the objective holds: encoder, heads, teacher, centre
        assert torch.equal(a[key], b[key]), key
    return resumed.stderr


def _run_cfg(out: Path, **changes) -> Config:
    from vitssl.config import load_config

    sets = {"model.depth": 1, "model.image_size": 8, "train.steps": 2, "train.batch_size": 4,
            "train.checkpoint_every": 1, "summary_eval.enabled": False, **changes}
    return load_config(None, [f"{k}={v}" for k, v in sets.items()] + [f"out={out}"])


def test_resume_refuses_a_changed_config_and_keeps_a_finished_summary(tmp_path):
    from vitssl.train.run import pretrain

    first = pretrain(_run_cfg(tmp_path))
    saved = (tmp_path / "config.yaml").read_text()
    with pytest.raises(VitsslError, match=r"changed config \(model.image_size: 8 -> 16\); "
                                          r"to resume it as it was pass --set "
                                          r"model.image_size=8, or"):
        pretrain(_run_cfg(tmp_path, **{"model.image_size": 16, "train.steps": 3}), resume=True)
    assert (tmp_path / "config.yaml").read_text() == saved  # the run directory is untouched
    again = pretrain(_run_cfg(tmp_path), resume=True)  # already complete: nothing retrained
    assert again["images_per_s"] == first["images_per_s"] > 0
    longer = pretrain(_run_cfg(tmp_path, **{"train.steps": 3}), resume=True)
    assert longer["steps"] == 3 and len(list_checkpoints(tmp_path)) >= 1


def test_resume_of_an_older_run_says_which_values_to_restore(tmp_path):
    """A config.yaml written before a key was resolved from the data or the objective."""
    import yaml

    from vitssl.train.run import pretrain

    # mae with learned position embeddings: an older default (today's is sin-cos)
    pretrain(_run_cfg(tmp_path, **{"objective.name": "mae", "model.pos_embed": "learned"}))
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["data"]["color"] is False
    del saved["data"]["color"]  # an older version did not record it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    longer = {"objective.name": "mae", "train.steps": 3}
    with pytest.raises(VitsslError) as refused:
        pretrain(_run_cfg(tmp_path, **longer), resume=True)
    message = str(refused.value)
    assert "pass --set model.pos_embed=learned and set data.color (not recorded" in message
    resumed = pretrain(_run_cfg(tmp_path, **longer, **{"model.pos_embed": "learned",
                                                        "data.color": "false"}), resume=True)
    assert resumed["steps"] == 3


def test_sharded_state_round_trips_and_refuses_what_it_would_unpickle(tmp_path):
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp

    from vitssl.train.sharded_state import load_tensors, save_tensors

    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    saved = {"state.w.exp_avg": torch.randn(3, 4), "state.w.step": torch.tensor(7.0)}
    save_tensors(saved, tmp_path / "ok")
    loaded = {k: torch.zeros_like(v) for k, v in saved.items()}
    load_tensors(loaded, tmp_path / "ok")
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    dcp.save({"w": torch.zeros(2), "lr": 0.1}, checkpoint_id=str(tmp_path / "bytes"))
    with pytest.raises(VitsslError, match=r"non-tensor entries \['lr'\]"):
        load_tensors({"w": torch.zeros(2)}, tmp_path / "bytes")

    class _Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / ".metadata").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(VitsslError, match="refusing to load"):
        load_tensors({"w": torch.zeros(2)}, tmp_path / "evil")


@pytest.mark.slow  # every objective's exact resume: test_every_objective.py
def test_sigkilled_moco_v3_run_resumes_momentum_encoder_and_heads_bit_for_bit(tmp_path):
    _kill_and_resume(tmp_path, "--objective", "moco-v3", "--set",
                     "objective.options.hidden_dim=32", "--set", "objective.options.out_dim=16")
