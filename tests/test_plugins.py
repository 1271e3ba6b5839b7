"""The plugin host, with real third-party packages installed into this environment."""

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from vitssl.plugins import build_registry

PLUGIN_MODULE = '''
"""A third-party vitssl plugin."""
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


@vitssl.hookimpl
def register_objectives(register):
    register("{name}-objective", MeanFeatureObjective)
    register("masked-patch-duplicate-of-a-stem", MeanFeatureObjective)


@vitssl.hookimpl
def register_stems(register):
    register("patch", MeanFeatureObjective)  # already taken by vitssl: reported, not fatal
'''


def _run(args, **env):
    return subprocess.run([sys.executable, "-m", "vitssl", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    """Install a tiny package with a good, a broken and a misspelt plugin; uninstall after."""
    name = f"vitssl_testplugin_{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp("plugin")
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    (root / name / "good.py").write_text(PLUGIN_MODULE.replace("{name}", name))
    (root / name / "broken.py").write_text("raise RuntimeError('plugin is broken on purpose')\n")
    (root / name / "misspelt.py").write_text(textwrap.dedent("""
        import vitssl

        @vitssl.hookimpl
        def register_objectivs(register):
            register("never", object)
    """))
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name.replace('_', '-')}"
        version = "0.0.1"

        [tool.setuptools]
        packages = ["{name}"]

        [project.entry-points.vitssl]
        {name}-good = "{name}.good"
        {name}-broken = "{name}.broken"
        {name}-misspelt = "{name}.misspelt"
    """))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["install", "-q", "--no-deps", "--no-build-isolation", str(root)],
                   check=True, timeout=300)
    yield name
    subprocess.run(pip + ["uninstall", "-q", "-y", name.replace("_", "-")], check=True,
                   timeout=300)


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
        [f"{third_party}-objective", "masked-patch-duplicate-of-a-stem"])
    assert registry.names("stems") == ["patch"]  # the third-party one, since vitssl's is off


def test_broken_plugin_does_not_break_the_cli(third_party):
    result = _run(["plugins"])
    assert result.returncode == 0
    assert "patch" in result.stdout
    assert "plugin is broken on purpose" in result.stderr
