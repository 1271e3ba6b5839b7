"""``torchrun`` with 2 gloo processes (DDP and FSDP) matches one process with the same global batch.

One launch of tests/distributed_worker.py trains every 2-rank run; the same
configs run here in one process as the reference. A separate pair of launches
SIGKILLs an FSDP run and resumes it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from distributed_worker import BASE, KILL_RUN, RUNS, config
from safetensors.torch import load_file

from vitssl.cli import main as cli_main
from vitssl.train.checkpoint import latest_checkpoint, list_checkpoints, load_encoder
from vitssl.train.run import pretrain
from vitssl.train.summary import random_init_encoder

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
WORKER = Path(__file__).with_name("distributed_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two-ranks")
    _run([*TORCHRUN, str(WORKER), str(root)])
    return root


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one-process")
    for name, extra in RUNS.items():
        pretrain(config(root / name, extra))
    return root


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _health(run: Path) -> list[tuple[int, dict[str, float]]]:
    """(step, monitor values) of each health check in a run's metrics."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], {k: v for k, v in r.items() if k.startswith(("rankme", "feature_",
                                                                     "probe_"))})
            for r in records if "rankme" in r]


def _assert_same_health(a: Path, b: Path) -> None:
    """Health checks at steps 2 and 4 with the probe at 4, equal in both runs."""
    checks = [_health(a), _health(b)]
    assert [step for step, _ in checks[1]] == [2, 4] and "probe_knn_k20_top1" in checks[1][1][1]
    assert checks[1] == [(step, pytest.approx(values, rel=1e-4)) for step, values in checks[0]]


def _assert_same_run(a: Path, b: Path) -> None:
    assert _losses(b) == pytest.approx(_losses(a), rel=1e-5)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_gloo_ranks_match_one_process(two_ranks, one_process):
    ddp = two_ranks / "ddp"
    # Rank 0 alone writes the run directory.
    assert len((ddp / "metrics.jsonl").read_text().splitlines()) == 4
    assert [s.name for s in (ddp / "checkpoints").iterdir()] == ["step-00000004"]
    _assert_same_run(one_process / "ddp", ddp)
    # the monitor checks the same encoder on every rank; rank 0's records equal one process's
    _assert_same_health(one_process / "ddp", ddp)
    # Both trained: the encoder moved away from the initialisation the run started from
    # (all but the post-pooling norm, which masked-patch never uses and so freezes).
    encoder, cfg = load_encoder(ddp)
    init = random_init_encoder(cfg).state_dict()
    for key, value in encoder.state_dict().items():
        moved = bool((value - init[key]).abs().max() > 1e-4)
        assert moved != key.startswith("fc_norm."), key


@pytest.mark.parametrize("name", ["ddp-dino", "ddp-dino-auto"])
def test_dino_on_two_ranks_matches_one_process(two_ranks, one_process, name):
    """Losses, student, teacher and centre (EMA, or Sinkhorn–Knopp with head BatchNorm)."""
    _assert_same_run(one_process / name, two_ranks / name)


@pytest.mark.parametrize("name", ["fsdp", "fsdp-accum"])
def test_fsdp_matches_one_process_with_and_without_accumulation(two_ranks, one_process, name):
    _assert_same_run(one_process / name, two_ranks / name)
    if name == "fsdp":  # the sharded encoder is gathered for the monitor's checks
        _assert_same_health(one_process / name, two_ranks / name)
    shards = latest_checkpoint(two_ranks / name) / "optimizer"
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp",
                                                        "__1_0.distcp"]


def test_fsdp_dino_ema_teacher_matches_the_replicated_one(two_ranks):
    replicated, sharded = two_ranks / "ddp-dino", two_ranks / "fsdp-dino"
    _assert_same_run(replicated, sharded)  # teacher, student, heads and centre
    weights = _weights(sharded)
    teacher, _ = load_encoder(sharded)  # the exported encoder is DINO's teacher
    student = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, weights[f"teacher_encoder.{key}"]), key
        if value.dtype.is_floating_point and key.startswith("blocks."):
            assert not torch.equal(value, student[key]), key  # an EMA, not a copy
    assert weights["center"].abs().sum() > 0


def test_fsdp_checkpoint_evaluates_and_resumes_in_one_process(two_ranks, one_process, capsys,
                                                              tmp_path):
    sharded, single = two_ranks / "fsdp", one_process / "fsdp"
    code = cli_main(["eval", "--device", "cpu", "--evaluator", "knn", "--checkpoint",
                     str(sharded), "--set", "k=[5]"])
    assert code == 0 and "knn_k5_top1" in capsys.readouterr().out.splitlines()[-1]
    encoder, _ = load_encoder(sharded)
    for key, value in encoder.state_dict().items():  # the gathered weights, unchanged
        assert torch.equal(value, _weights(sharded)[f"encoder.{key}"]), key
    # The 2-rank run's step-2 weights and sharded optimizer state, resumed in one process,
    # repeat the uninterrupted 1-process run.
    run = tmp_path / "resumed"
    shutil.copytree(sharded, run)
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    pretrain(config(run, RUNS["fsdp"]), resume=True)
    _assert_same_run(single, run)


def test_every_rank_rng_state_is_restored_on_resume(two_ranks):
    full, resumed = two_ranks / "rng-full", two_ranks / "rng-resumed"
    assert _losses(resumed) == _losses(full)  # bit for bit, drop-path on both ranks
    a, b = _weights(full), _weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fsdp_halves_parameters_and_optimizer_state_per_rank(two_ranks):
    for rank in (0, 1):
        result = json.loads((two_ranks / f"memory-{rank}.json").read_text())
        for strategy in ("ddp", "fsdp"):
            assert result[strategy]["measured"] == result[strategy]["rule"], strategy
        ddp, fsdp = (result[s]["measured"] for s in ("ddp", "fsdp"))
        ratio = (fsdp["params"] + fsdp["optimizer"]) / (ddp["params"] + ddp["optimizer"])
        assert 0.49 < ratio < 0.51, ratio
        assert fsdp["grads"] < 0.51 * ddp["grads"]


# -- a SIGKILLed 2-rank FSDP run resumed with --resume repeats the uninterrupted one ---------

def _cli(out: Path, *extra: str) -> list[str]:
    sets = [arg for kv in (*BASE, *KILL_RUN) for arg in ("--set", kv)]
    return [*TORCHRUN, "-m", "vitssl", "pretrain", "--objective", "masked-patch", *sets,
            "--out", str(out), *extra]


def _records(run: Path) -> list[tuple[int, float]]:
    if not (run / "metrics.jsonl").is_file():
        return []
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_sigkilled_fsdp_run_resumes_to_the_same_losses(two_ranks, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_records(killed)) >= 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the agent and both ranks, like a lost node
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    steps_before = [s for s, _ in list_checkpoints(killed)]
    assert steps_before and max(steps_before) < 10
    _run(_cli(killed, "--resume"))
    full = two_ranks / "fsdp-kill-full"
    assert _records(killed) == _records(full)  # every step, bit for bit
    assert [s for s, _ in _records(full)] == list(range(1, 11))
    a, b = _weights(full), _weights(killed)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_moco_v3_on_two_ranks_matches_one_process(two_ranks, one_process):
    """Losses, base and momentum encoders, heads and BatchNorm statistics.

    Weights to 1e-4 absolute (10% of one step at lr 1e-3): AdamW turns the rank-order
    rounding of a near-zero gradient element into a visible step (2 of 147k elements).
    """
    a, b = one_process / "ddp-moco", two_ranks / "ddp-moco"
    assert _losses(b) == pytest.approx(_losses(a), rel=1e-5)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-4, msg=key)
    assert any(k.startswith("momentum_encoder.") for k in wb)
    assert any(k.endswith("running_var") for k in wb)


def test_ibot_on_two_ranks_matches_one_process(two_ranks, one_process):
    """Losses, student, teacher, mask token and both centres: masks follow sample seeds."""
    ddp = two_ranks / "ddp-ibot"
    _assert_same_run(one_process / "ddp-ibot", ddp)
    weights = _weights(ddp)
    assert weights["patch_center"].abs().sum() > 0 and weights["mask_token"].abs().sum() > 0


def test_data2vec2_on_two_ranks_matches_one_process(two_ranks, one_process):
    """Losses, student, EMA teacher and decoder: every clone's mask follows its sample seed."""
    _assert_same_run(one_process / "ddp-d2v", two_ranks / "ddp-d2v")
    weights = _weights(two_ranks / "ddp-d2v")
    assert not torch.equal(weights["teacher.blocks.0.mlp.fc1.weight"],
                           weights["encoder.blocks.0.mlp.fc1.weight"])


@pytest.mark.parametrize("objective", ["moco", "ibot", "d2v"])
def test_fsdp_ema_objectives_match_the_replicated_run(two_ranks, objective):
    """MoCo v3's momentum encoder, iBOT's and data2vec 2.0's teachers, sharded, repeat the
    DDP run."""
    replicated, sharded = two_ranks / f"ddp-{objective}", two_ranks / f"fsdp-{objective}"
    assert _losses(sharded) == pytest.approx(_losses(replicated), rel=1e-5)
    wa, wb = _weights(replicated), _weights(sharded)
    assert wa.keys() == wb.keys()
    for key in wa:  # 1e-4 absolute: see test_moco_v3_on_two_ranks_matches_one_process
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-4, msg=key)
    encoder, _ = load_encoder(sharded)
    exported = "teacher_encoder" if objective == "ibot" else "encoder"
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, wb[f"{exported}.{key}"]), key
