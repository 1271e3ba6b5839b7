"""The plugin host, with third-party packages found through their entry points."""

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import torch
from readme_code import readme_code

from vitssl.plugins import build_registry

PLUGIN_MODULE = '''
"""A third-party vitssl plugin."""
import torch
import vitssl

from .readme import PairEma


class MeanFeatureObjective(vitssl.Objective):
    """Pull the pooled features towards zero (a toy objective)."""

    def __init__(self, encoder, weight=1.0):
        super().__init__()
        self.encoder, self.weight = encoder, float(weight)

    def forward(self, batch):
        pooled = self.encoder(batch["image"])
        return {"loss": self.weight * pooled.pow(2).mean()}


class CountingPairEma(PairEma):
    """The README's objective, counting its calls and recording what its batches held."""

    def __init__(self, encoder):
        super().__init__(encoder, momentum=0.5)
        self.register_buffer("calls", torch.zeros(3, dtype=torch.long))  # forward/before/after
        self.register_buffer("seen", torch.zeros(4, dtype=torch.long))  # step/total/V/size

    def forward(self, batch):
        pair = batch["views"]["pair"]  # (B, 2, 3, S, S)
        self.calls[0] += 1
        self.seen.copy_(torch.tensor([batch["step"], batch["total_steps"], pair.shape[1],
                                      pair.shape[-1]]))
        return super().forward(batch)

    def before_optimizer_step(self, step, total_steps):
        self.calls[1] += 1

    def after_optimizer_step(self, step, total_steps):
        self.calls[2] += 1
        super().after_optimizer_step(step, total_steps)


@vitssl.hookimpl
def register_objectives(register):
    register("{name}-objective", MeanFeatureObjective)
    register("{name}-pair-ema", CountingPairEma)
    register("masked-patch-duplicate-of-a-stem", MeanFeatureObjective)
    register("{name}-plain-module", torch.nn.Identity)  # not a vitssl.Objective: refused


@vitssl.hookimpl
def register_stems(register):
    register("patch", MeanFeatureObjective)  # already taken by vitssl: reported, not fatal
'''


def _run(args, **env):
    return subprocess.run([sys.executable, "-m", "vitssl", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


@pytest.fixture
def third_party(plugin_package):
    """A package with a good, a broken and a misspelt plugin and the README's, not installed."""
    name = f"vitssl_testplugin_{uuid.uuid4().hex[:8]}"
    misspelt = textwrap.dedent("""
        import vitssl

        @vitssl.hookimpl
        def register_objectivs(register):
            register("never", object)
    """)
    plugin_package(name, {"good": PLUGIN_MODULE.replace("{name}", name),
                          "readme": readme_code("### Writing an objective"),
                          "broken": "raise RuntimeError('plugin is broken on purpose')\n",
                          "misspelt": misspelt},
                   {f"{name}-good": "good", f"{name}-readme": "readme",
                    f"{name}-broken": "broken", f"{name}-misspelt": "misspelt"})
    return name


def test_installed_plugin_is_listed_and_failures_are_reported(third_party):
    result = _run(["plugins", "--json"])
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    objectives = {o["name"]: o for o in listing["objectives"]}
    dist = third_party.replace("_", "-")
    assert objectives[f"{third_party}-objective"]["distribution"] == dist
    assert objectives["pair-ema"]["distribution"] == dist  # the README's example
    assert any(s["name"] == "patch" and s["distribution"] == "vitssl" for s in listing["stems"])
    failures = {f["plugin"]: f for f in listing["failures"]}
    assert "plugin is broken on purpose" in failures[f"{third_party}-broken"]["error"]
    assert failures[f"{third_party}-broken"]["distribution"] == dist
    assert "register_objectivs" in failures[f"{third_party}-misspelt"]["error"]
    assert "already registered" in failures[f"{third_party}-good"]["error"]
    assert any("objective '" + f"{third_party}-plain-module' is not a vitssl.Objective subclass"
               in f["error"] for f in listing["failures"])


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


def test_plugins_name_prints_its_reference(third_party, capsys):
    from vitssl.cli import main
    from vitssl.plugins import get_registry

    get_registry(refresh=True)
    assert main(["plugins", "pair-ema"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"objective 'pair-ema' from {third_party.replace('_', '-')}")
    assert "pull two crops of an image together" in out  # the README module's docstring
    assert main(["plugins", "mae"]) == 0 and "He et al. 2022" in capsys.readouterr().out
    assert main(["plugins", "pair-emma"]) == 2
    assert "did you mean 'pair-ema'" in capsys.readouterr().err


def test_third_party_objective_with_views_hooks_and_exported_encoder(third_party, tmp_path):
    """The README's objective: views reach it, hooks run once per optimiser step, and its
    EMA encoder is the exported one."""
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
