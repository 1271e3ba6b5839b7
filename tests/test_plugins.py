"""The plugin host, with third-party packages found through their entry points."""

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import torch

from vitssl.plugins import build_registry

PLUGIN_MODULE = '''
"""A third-party vitssl plugin."""
import copy

import torch
import vitssl


class MeanFeatureObjective(torch.nn.Module):
    """Pull the pooled features towards zero (a toy objective)."""

    def __init__(self, encoder, weight=1.0):
        super().__init__()
        self.encoder, self.weight = encoder, float(weight)

    def forward(self, batch):
        pooled = self.encoder(batch["image"])
        return {"loss": self.weight * pooled.pow(2).mean()}


class PairView:
    """Two random crops of each image (picklable, for DataLoader workers)."""

    def __init__(self, size):
        from torchvision.transforms import v2

        self.crop = v2.Compose([v2.ToImage(), v2.RGB(),
                                v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)])

    def __call__(self, image):
        return {"pair": torch.stack([self.crop(image), self.crop(image)])}


class PairEmaObjective(torch.nn.Module):
    """Pull two crops' features together; an EMA copy of the encoder is the exported one."""

    export_encoder = "ema_encoder"

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.ema_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.register_buffer("calls", torch.zeros(3, dtype=torch.long))  # forward/before/after
        self.register_buffer("seen", torch.zeros(4, dtype=torch.long))  # step/total/V/size

    def views(self, image_size, data):
        return PairView(image_size)

    def forward(self, batch):
        pair = batch["views"]["pair"]  # (B, 2, 3, S, S)
        a, b = self.encoder(pair[:, 0]), self.encoder(pair[:, 1])
        self.calls[0] += 1
        self.seen.copy_(torch.tensor([batch["step"], batch["total_steps"], pair.shape[1],
                                      pair.shape[-1]]))
        return {"loss": (a - b).pow(2).mean() + 1e-3 * a.pow(2).mean()}

    def before_optimizer_step(self, step, total_steps):
        self.calls[1] += 1

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps):
        self.calls[2] += 1
        for ema, live in zip(self.ema_encoder.parameters(), self.encoder.parameters()):
            ema.lerp_(live, 0.5)


@vitssl.hookimpl
def register_objectives(register):
    register("{name}-objective", MeanFeatureObjective)
    register("{name}-pair-ema", PairEmaObjective)
    register("masked-patch-duplicate-of-a-stem", MeanFeatureObjective)


@vitssl.hookimpl
def register_stems(register):
    register("patch", MeanFeatureObjective)  # already taken by vitssl: reported, not fatal
'''


def _run(args, **env):
    return subprocess.run([sys.executable, "-m", "vitssl", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


@pytest.fixture
def third_party(plugin_package):
    """A tiny package with a good, a broken and a misspelt plugin, visible but not installed."""
    name = f"vitssl_testplugin_{uuid.uuid4().hex[:8]}"
    misspelt = textwrap.dedent("""
        import vitssl

        @vitssl.hookimpl
        def register_objectivs(register):
            register("never", object)
    """)
    plugin_package(name, {"good": PLUGIN_MODULE.replace("{name}", name),
                          "broken": "raise RuntimeError('plugin is broken on purpose')\n",
                          "misspelt": misspelt},
                   {f"{name}-good": "good", f"{name}-broken": "broken",
                    f"{name}-misspelt": "misspelt"})
    return name


def test_installed_plugin_is_listed_and_failures_are_reported(third_party):
    result = _run(["plugins", "--json"])
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    objectives = {o["name"]: o for o in listing["objectives"]}
    dist = third_party.replace("_", "-")
    assert objectives[f"{third_party}-objective"]["distribution"] == dist
    assert any(s["name"] == "patch" and s["distribution"] == "vitssl" for s in listing["stems"])
    failures = {f["plugin"]: f for f in listing["failures"]}
    assert "plugin is broken on purpose" in failures[f"{third_party}-broken"]["error"]
    assert failures[f"{third_party}-broken"]["distribution"] == dist
    assert "register_objectivs" in failures[f"{third_party}-misspelt"]["error"]
    assert "already registered" in failures[f"{third_party}-good"]["error"]


def test_installed_plugin_objective_can_be_selected(third_party):
    registry = build_registry()
    factory = registry.get("objectives", f"{third_party}-objective")
    import torch

    from vitssl.config import ModelConfig
    from vitssl.models import build_encoder

    encoder = build_encoder(ModelConfig(depth=1, image_size=16))
    out = factory(encoder=encoder)({"image": torch.randn(2, 3, 16, 16)})
    assert out["loss"].ndim == 0 and out["loss"] > 0


def test_plugin_selection_environment_variables(third_party, monkeypatch):
    monkeypatch.setenv("VITSSL_DISABLE_PLUGINS", f"{third_party}-broken,{third_party}-good")
    registry = build_registry()
    assert f"{third_party}-objective" not in registry.names("objectives")
    assert not any(f.plugin.endswith("-broken") for f in registry.failures)
    monkeypatch.delenv("VITSSL_DISABLE_PLUGINS")
    monkeypatch.setenv("VITSSL_PLUGINS", f"{third_party}-good")
    registry = build_registry()
    assert registry.names("objectives") == sorted(
        [f"{third_party}-objective", f"{third_party}-pair-ema",
         "masked-patch-duplicate-of-a-stem"])
    assert registry.names("stems") == ["patch"]  # the third-party one, since vitssl's is off


def test_broken_plugin_does_not_break_the_cli(third_party):
    result = _run(["plugins"])
    assert result.returncode == 0
    assert "patch" in result.stdout
    assert "plugin is broken on purpose" in result.stderr


def test_third_party_objective_with_views_hooks_and_exported_encoder(third_party, tmp_path):
    """Views reach the objective; hooks run once per optimiser step; its encoder is exported."""
    from safetensors.torch import load_file

    from vitssl.train.checkpoint import latest_checkpoint, load_encoder

    run = tmp_path / "run"
    result = _run(["pretrain", "--objective", f"{third_party}-pair-ema", "--steps", "3",
                   "--batch-size", "4", "--image-size", "16", "--device", "cpu", "--out",
                   str(run), "--set", "model.depth=1", "--set", "train.accum_steps=2",
                   "--set", "summary_eval.enabled=false"], OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr
    weights = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert weights["calls"].tolist() == [6, 3, 3]  # 2 micro-batches per step, hooks per step
    assert weights["seen"].tolist() == [2, 3, 2, 16]  # last step, total, views, crop size
    encoder, _ = load_encoder(run)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, weights[f"ema_encoder.{key}"]), key
    assert any(not torch.equal(weights[f"ema_encoder.{k}"], weights[f"encoder.{k}"])
               for k in encoder.state_dict())
