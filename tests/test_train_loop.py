"""The pretraining loop: optimiser groups, schedule, a short run, accumulation, failures."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from vitssl_plugins.masked_patch import MaskedPatchPrediction

from vitssl.config import Config, ModelConfig, load_config
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.plugins import get_registry
from vitssl.train.checkpoint import list_checkpoints
from vitssl.train.optim import param_groups
from vitssl.train.run import pretrain
from vitssl.train.runlog import read_metrics
from vitssl.train.schedule import build_scheduler, lr_at


def _tiny(out, *extra: str) -> Config:
    return load_config(None, [
        f"out={out}", "model.depth=1", "model.image_size=16", "train.batch_size=16",
        "train.steps=6", "train.warmup_steps=2", "train.checkpoint_every=2",
        "train.log_every=1", "train.device=cpu", "summary_eval.enabled=false",
        "monitor.enabled=false", *extra])


def test_weight_decay_only_on_weight_matrices():
    encoder = build_encoder(ModelConfig(image_size=16, depth=1))
    obj = MaskedPatchPrediction(encoder)
    decay, no_decay = param_groups(obj, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in obj.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert decayed | plain == set(names.values()) and not decayed & plain
    for name in ("encoder.pos_embed", "encoder.cls_token", "mask_token", "head.bias",
                 "encoder.norm.weight", "encoder.blocks.0.norm1.bias",
                 "encoder.blocks.0.attn.qkv.bias"):
        assert name in plain
    for name in ("head.weight", "encoder.blocks.0.attn.qkv.weight",
                 "encoder.blocks.0.mlp.fc1.weight", "encoder.patch_embed.proj.weight"):
        assert name in decayed


def test_schedule_warmup_then_cosine_or_linear():
    kw = dict(base_lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    for step in (10, 35, 60, 85, 109):
        t = (step - 10) / 100
        assert lr_at(step, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
        assert lr_at(step, schedule="linear", **kw) == pytest.approx(0.1 + 0.9 * (1 - t))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4, min_lr=0.0)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, base_lr=2.0, total_steps=20, warmup_steps=4)
                                  for s in range(20)])
    with pytest.raises(VitsslError, match="schedule"):
        lr_at(0, schedule="step", **kw)


def test_short_run_learns_and_writes_the_run_directory(tmp_path, capsys):
    cfg = _tiny(tmp_path / "run", "train.steps=20", "train.lr=0.002", "train.checkpoint_every=5",
                "train.log_every=10")
    summary = pretrain(cfg)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    assert [s for s, _ in list_checkpoints(run)] == [15, 20]  # keep_checkpoints=2
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 21))
    assert {"loss", "lr", "accuracy", "images_per_s"} <= set(records[0])
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert last < first - 0.5  # 512-way cross entropy starts near ln 512 = 6.2
    assert summary["steps"] == 20 and summary["final_loss"] == pytest.approx(
        sum(r["loss"] for r in records[-10:]) / 10)
    err = capsys.readouterr().err
    assert "step 10/20" in err and "step 20/20" in err  # plain lines when not a TTY
    weights = load_file(str(run / "checkpoints" / "step-00000020" / "model.safetensors"))
    assert "encoder.pos_embed" in weights and "mask_token" in weights


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    results = []
    for accum in (1, 2):
        cfg = _tiny(tmp_path / f"a{accum}", "train.steps=3", f"train.accum_steps={accum}",
                    "data.augment=false")
        pretrain(cfg)
        results.append(load_file(str(tmp_path / f"a{accum}" / "checkpoints" / "step-00000003"
                                     / "model.safetensors")))
        losses = [r["loss"] for r in read_metrics(tmp_path / f"a{accum}")]
        results.append(losses)
    for key, value in results[0].items():
        torch.testing.assert_close(results[2][key], value, rtol=1e-4, atol=1e-5)
    assert results[3] == pytest.approx(results[1], rel=1e-4)


class _ExplodesAtStep3(MaskedPatchPrediction):
    calls = 0

    def forward(self, batch):
        out = super().forward(batch)
        type(self).calls += 1
        if type(self).calls >= 3:
            out["loss"] = out["loss"] * float("nan")
        return out


class _NeedsLabels(MaskedPatchPrediction):
    requires_labels = True


PLUGIN = f"""
import vitssl
from {__name__} import _ExplodesAtStep3, _NeedsLabels


@vitssl.hookimpl
def register_objectives(register):
    register("explodes", _ExplodesAtStep3)
    register("needs-labels", _NeedsLabels)
"""


@pytest.fixture
def extra_objectives(plugin_package):
    """The two objectives above, registered the way a plugin package registers them."""
    plugin_package("loop_test_objectives", {"objectives": PLUGIN}, {"loop-tests": "objectives"})
    get_registry(refresh=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, extra_objectives):
    _ExplodesAtStep3.calls = 0
    cfg = _tiny(tmp_path / "run", "objective.name=explodes")
    with pytest.raises(VitsslError, match=r"non-finite \(loss=nan\) at step 3;.*step-00000002"):
        pretrain(cfg)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]


def test_objective_needing_labels_refuses_unlabelled_data(tmp_path, extra_objectives):
    cfg = _tiny(tmp_path / "run", "objective.name=needs-labels", "data.spec=builtin:photos")
    with pytest.raises(VitsslError, match="needs labels"):
        pretrain(cfg)


def test_bf16_autocast_trains_and_tensorboard_is_optional(tmp_path, capsys):
    cfg = _tiny(tmp_path / "run", "train.precision=bf16", "train.steps=2", "log.tensorboard=true")
    summary = pretrain(cfg)
    assert math.isfinite(summary["final_loss"])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard is not installed" in capsys.readouterr().err
    else:
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_config_errors_are_user_errors(tmp_path):
    with pytest.raises(VitsslError, match="precision"):
        pretrain(_tiny(tmp_path / "a", "train.precision=fp8"))
    with pytest.raises(VitsslError, match="divisible"):
        pretrain(_tiny(tmp_path / "b", "train.accum_steps=3"))
    with pytest.raises(VitsslError, match="does not accept options"):
        pretrain(_tiny(tmp_path / "c", "objective.options.colour=1"))
    pretrain(_tiny(tmp_path / "d", "train.steps=2"))
    with pytest.raises(VitsslError, match="--resume"):
        pretrain(_tiny(tmp_path / "d", "train.steps=2"))


@pytest.mark.slow
def test_default_run_beats_random_init_after_fine_tuning(tmp_path):
    """The main job: ``vitssl pretrain --objective masked-patch`` with the defaults."""
    cfg = load_config(None, [f"out={tmp_path / 'run'}"])
    evaluation = pretrain(cfg)["evaluation"]
    finetune = evaluation["finetune"]
    assert finetune["pretrained"] >= finetune["random_init"] + 5, finetune
    few = evaluation["few_shot"]
    assert few["pretrained"].keys() == few["random_init"].keys() and few["pretrained"]
    for key, value in few["pretrained"].items():
        assert value > few["random_init"][key], (key, few)


def test_non_finite_loss_read_at_a_later_logging_step_names_its_step(tmp_path,
                                                                     extra_objectives):
    # The loss is read only every 4 steps: step 3 goes bad, step 4 reads it.
    _ExplodesAtStep3.calls = 0
    cfg = _tiny(tmp_path / "run", "objective.name=explodes", "train.log_every=4",
                "train.checkpoint_every=5")
    with pytest.raises(VitsslError, match=r"non-finite \(loss=nan\) at step 3; stopping at step 4 "
                                          r"without saving .*no checkpoint was written yet"):
        pretrain(cfg)
    assert list_checkpoints(tmp_path / "run") == []
    assert read_metrics(tmp_path / "run") == []  # nothing logged past the bad step


def test_activation_checkpointing_leaves_gradients_unchanged():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, depth=2, drop_path_rate=0.5, drop_rate=0.1)
    objective = MaskedPatchPrediction(build_encoder(cfg))
    batch = {"image": torch.randn(4, 3, 16, 16), "pixels": torch.rand(4, 3, 16, 16),
             "sample_seed": torch.arange(4)}
    saved = []

    def grads(seed: int) -> dict[str, torch.Tensor]:
        objective.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # dropout and drop-path draw the same masks both ways
        saved.append(0)  # tensors the forward keeps for backward, outside checkpointed blocks

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[-1] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = objective(batch)["loss"]
        loss.backward()
        return {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}

    plain = grads(1)
    objective.encoder.set_grad_checkpointing()
    checkpointed = grads(1)
    assert saved[1] < saved[0]  # the blocks kept only their inputs
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=0, msg=name)
    assert grads(2)["encoder.blocks.1.mlp.fc1.weight"].ne(plain[
        "encoder.blocks.1.mlp.fc1.weight"]).any()  # the masks matter: the check can fail
    objective.encoder.set_grad_checkpointing(False)
    grads(1)
    assert saved[-1] == saved[0]


@pytest.mark.slow  # about 45 s of inductor compilation with a cold cache
def test_compiled_objective_and_checkpointing_train_like_eager(tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    runs = {}
    for name, extra in {"eager": [], "compiled": ["train.compile=true",
                                                  "train.activation_checkpointing=true"]}.items():
        pretrain(_tiny(tmp_path / name, "train.steps=2", "model.attention=sdpa", *extra))
        runs[name] = [r["loss"] for r in read_metrics(tmp_path / name)]
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-4)
    assert counters["stats"]["unique_graphs"] > 0  # the forward went through dynamo
