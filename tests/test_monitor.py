"""The run monitor: RankMe's closed forms, the held-out images, the probe against the k-NN
evaluator, alarms, loss terms that go non-finite (stop and rollback)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from vitssl_plugins.masked_patch import MaskedPatchPrediction

from vitssl.cli import main as cli_main
from vitssl.config import MonitorConfig, load_config
from vitssl.data.batches import StepBatches
from vitssl.errors import VitsslError
from vitssl.plugins import get_registry
from vitssl.train import alarms
from vitssl.train.checkpoint import list_checkpoints
from vitssl.train.health import RANKME_EPS, health, held_out_images, rankme, tail_held_out
from vitssl.train.run import pretrain
from vitssl.train.runlog import read_metrics


def _tiny(out, *extra: str):
    return load_config(None, [
        f"out={out}", "model.depth=1", "model.image_size=16", "train.batch_size=16",
        "train.steps=6", "train.warmup_steps=2", "train.checkpoint_every=2",
        "train.log_every=1", "train.device=cpu", "summary_eval.enabled=false",
        "monitor.every=1", "monitor.images=32", *extra])


def _closed_form(singular_values: list[float]) -> float:
    s = torch.tensor(singular_values, dtype=torch.float64)
    p = s / s.sum() + RANKME_EPS
    return math.exp(float(-(p * p.log()).sum()))


def _planted(n: int, d: int, values: list[float]) -> torch.Tensor:
    """An (n, d) matrix with exactly these singular values."""
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    s = torch.zeros(n, d, dtype=torch.float64)
    s[range(len(values)), range(len(values))] = torch.tensor(values, dtype=torch.float64)
    return u @ s @ v.T


@pytest.mark.parametrize("values", [[1.0] * 16, [3.0, 2.0, 1.0], [5.0]])
def test_rankme_equals_its_closed_form_on_planted_ranks(values):
    features = _planted(32, 16, values)
    assert rankme(features) == pytest.approx(_closed_form(values + [0.0] * (16 - len(values))),
                                             rel=1e-9)
    if len(set(values)) == 1:  # equal singular values: the rank itself
        assert rankme(features) == pytest.approx(len(values), rel=1e-4)
    constant = torch.ones(32, 16) * torch.randn(16)
    assert rankme(constant) == pytest.approx(1.0, abs=1e-3)
    out = health(constant)
    assert out["feature_std"] == pytest.approx(0.0, abs=1e-6)
    assert out["feature_cos"] == pytest.approx(1.0, abs=1e-9)


def test_spread_of_isotropic_features_is_one_over_root_width():
    features = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    out = health(features)
    assert out["feature_std"] == pytest.approx(1 / 8, rel=0.02)
    assert abs(out["feature_cos"]) < 0.01 and out["rankme_ratio"] > 0.9


def test_held_out_images_come_from_a_split_that_is_never_trained_on(tmp_path):
    cfg = _tiny(tmp_path / "a")
    images, where = held_out_images(cfg)
    assert "builtin:digits:test" in where and tail_held_out(cfg) == 0
    single = _tiny(tmp_path / "b", "data.split=test")  # no other split: keep its tail out
    assert tail_held_out(single) == 32
    images, where = held_out_images(single)
    assert "kept out of training" in where
    for size, kept in ((200, 32), (100, 25)):  # at most a quarter of a small dataset
        batches = StepBatches(list(range(size)), lambda x: torch.zeros(3, 2, 2), batch_size=16,
                              seed=0, mean=(0.0,) * 3, std=(1.0,) * 3, num_steps=50, held_out=32)
        drawn = {i for step in range(50) for i in batches.indices(step)}
        assert drawn == set(range(size - kept))  # the last ones never reach the optimiser


def _records(**values) -> list[dict]:
    base = {"rankme": 10.0, "rankme_ratio": 0.2, "feature_std": 0.05, "feature_cos": 0.5}
    return [{"step": i + 1, "loss": values.get("loss", 5.0 - i), **base,
             **{k: v for k, v in values.items() if k != "loss"}} for i in range(4)]


def test_alarms_fire_once_on_their_signal_and_stay_silent_otherwise():
    ctx = alarms.Context(MonitorConfig(), width=64, chance=10.0)
    assert alarms.raised(_records(), ctx) == []
    collapsed = _records(rankme_ratio=0.01, feature_std=0.0)
    assert [n for n, _ in alarms.raised(collapsed, ctx)] == ["collapse"]
    assert alarms.raised(collapsed + [{"step": 4, "alarm": "collapse"}], ctx) == []
    uniform = _records(teacher_entropy_ratio=0.995)
    (name, message), = alarms.raised(uniform, ctx)
    assert name == "teacher_entropy" and "update_mass" in message and "teacher_temp" in message
    assert alarms.raised(_records(teacher_entropy_ratio=0.5), ctx) == []
    assert [n for n, _ in alarms.raised(_records(loss=2.0), ctx)] == ["loss_stuck"]
    assert [n for n, _ in alarms.raised(_records(probe_knn_k20_top1=11.0), ctx)] == \
        ["probe_chance"]


@pytest.mark.parametrize("setting, match", [
    ("monitor.every=0", "monitor.every must be >= 1"),
    ("monitor.probe=nosuch:x", "bad data spec 'nosuch:x'"),
    ("monitor.probe=builtin:photos", "monitor.probe=builtin:photos: .*no labels"),
    ("monitor.on_alarm=panic", "unknown monitor.on_alarm 'panic'"),
    ("monitor.min_spread=2", r"monitor.min_spread must be in \[0, 1\]"),
    ("train.on_nonfinite=ignore", "train.on_nonfinite must be one of stop, rollback")])
def test_bad_monitor_settings_are_one_line_errors(tmp_path, capsys, setting, match):
    with pytest.raises(VitsslError, match=match) as info:  # when loaded, or when built
        pretrain(_tiny(tmp_path / "run", setting))
    assert "\n" not in str(info.value)


class _Constant(MaskedPatchPrediction):
    """Its encoder maps every image to one vector: the final norm's scale is zero."""

    def __init__(self, encoder, **options):
        super().__init__(encoder, **options)
        encoder.norm.weight.data.zero_()
        encoder.norm.weight.requires_grad_(False)


class _NanTerm(MaskedPatchPrediction):
    """Reports a term ``loss_bad`` that is NaN at step 3 (from 0) of the first run only."""

    fired = False

    def forward(self, batch):
        out = super().forward(batch)
        bad = torch.zeros((), device=out["loss"].device)
        if batch["step"] == 3 and not type(self).fired:
            type(self).fired = True
            bad = bad * float("nan")
        out["loss"] = out["loss"] + bad
        out["loss_bad"] = bad.detach()
        return out


PLUGIN = f"""
import vitssl
from {__name__} import _Constant, _NanTerm


@vitssl.hookimpl
def register_objectives(register):
    register("constant", _Constant)
    register("nan-term", _NanTerm)
"""


@pytest.fixture
def monitor_objectives(plugin_package):
    plugin_package("monitor_test_objectives", {"objectives": PLUGIN},
                   {"monitor-tests": "objectives"})
    get_registry(refresh=True)


def test_collapse_alarm_fires_at_the_first_check_and_can_stop(tmp_path, monitor_objectives,
                                                              capsys):
    cfg = _tiny(tmp_path / "run", "objective.name=constant", "model.pool=token",
                "model.fc_norm=false", "monitor.probe=none", "monitor.on_alarm=stop")
    with pytest.raises(VitsslError, match="stopping at step 1 on the alarm"):
        pretrain(cfg)
    err = capsys.readouterr().err
    assert "alarm at step 1 (collapse): features collapsing" in err and "train.lr" in err
    assert [r["alarm"] for r in read_metrics(tmp_path / "run") if "alarm" in r] == ["collapse"]


def test_a_nan_term_stops_naming_it_and_the_run_resumes(tmp_path, monitor_objectives):
    _NanTerm.fired = False
    cfg = _tiny(tmp_path / "run", "objective.name=nan-term", "monitor.enabled=false")
    with pytest.raises(VitsslError, match=r"non-finite \(loss=nan, loss_bad=nan\) at step 4;"
                                          r".*step-00000002"):
        pretrain(cfg)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert pretrain(cfg, resume=True)["steps"] == 6


def test_a_nan_term_rolls_back_at_half_the_lr_and_finishes_finite(tmp_path,
                                                                   monitor_objectives):
    _NanTerm.fired = False
    cfg = _tiny(tmp_path / "run", "objective.name=nan-term", "train.on_nonfinite=rollback",
                "monitor.enabled=false")
    assert math.isfinite(pretrain(cfg)["final_loss"])
    records = read_metrics(tmp_path / "run")
    (rollback,) = [r for r in records if "rollback" in r]
    assert rollback["step"] == 2 and rollback["bad_step"] == 4 and rollback["lr_scale"] == 0.5
    assert rollback["terms"] == {"loss": "nan", "loss_bad": "nan"}
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    weights = load_file(str(list_checkpoints(tmp_path / "run")[-1][1] / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_the_probe_equals_the_knn_evaluator_on_the_same_checkpoint(tmp_path, capsys):
    cfg = _tiny(tmp_path / "run", "train.steps=2", "monitor.every=2")
    pretrain(cfg)
    (last,) = [r for r in read_metrics(tmp_path / "run") if "probe_knn_k20_top1" in r]
    capsys.readouterr()
    assert cli_main(["eval", "--evaluator", "knn", "--checkpoint", str(tmp_path / "run"),
                     "--data", "builtin:digits", "--set", "k=20", "--set", "max_train=256",
                     "--set", "max_test=128", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["step"] == 2 and record["metrics"]["knn_k20_top1"] == \
        last["probe_knn_k20_top1"]


def test_analyze_draws_the_health_metrics_and_probe_beside_the_loss(tmp_path):
    from vitssl.analyze.curves import read_curves

    lines = [{"step": 1, "loss": 2.0, "lr": 0.1, "accuracy": 0.5},
             {"step": 2, "loss": 1.0, "lr": 0.1, "accuracy": 0.6, "rankme": 9.0,
              "rankme_ratio": 0.1, "feature_std": 0.01, "feature_cos": 0.9,
              "probe_knn_k20_top1": 50.0},
             {"step": 2, "alarm": "collapse", "message": "..."},
             {"step": 2, "rollback": 1, "bad_step": 3, "lr_scale": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    curves = read_curves(tmp_path)
    assert list(curves)[:4] == ["loss", "rankme", "feature_std", "probe_knn_k20_top1"]
    assert curves["rankme"] == ([2], [9.0]) and "rollback" not in curves


def test_a_resumed_run_checks_and_alarms_as_an_uninterrupted_one(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = _tiny(run, "train.steps=4", "monitor.probe_every=2", "monitor.min_spread=0.5")
    pretrain(cfg)  # min_spread=0.5: a collapse alarm at the first check, recorded once

    def logged():
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(run)]

    whole = logged()
    assert sum("rankme" in r for r in whole) == 4 and sum("alarm" in r for r in whole) == 1
    assert sum("probe_knn_k20_top1" in r for r in whole) == 2
    shutil.rmtree(list_checkpoints(run)[-1][1])  # as if killed after step 2's checkpoint
    pretrain(cfg, resume=True)
    assert logged() == whole


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["masked-patch", "mae"])
def test_the_default_runs_raise_no_alarm(tmp_path, objective):
    cfg = load_config(None, [f"out={tmp_path / objective}", f"objective.name={objective}",
                             "summary_eval.enabled=false"])
    pretrain(cfg)
    records = read_metrics(tmp_path / objective)
    assert sum("rankme" in r for r in records) == 20
    assert [r for r in records if "alarm" in r] == []
