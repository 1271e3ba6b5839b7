"""Config precedence and one-line CLI errors."""

import os
import subprocess
import sys

import pytest

from vitssl.config import load_config, parse_override, save_config
from vitssl.errors import VitsslError


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vitssl", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("args,message", [
    (["pretrain", "--objective", "nope"], "unknown objective 'nope'"),
    (["pretrain", "--set", "train.lrr=0.1"], "did you mean 'train.lr'"),
    (["pretrain", "--set", "train.lr"], "expected key=value"),
    (["pretrain", "--set", "train.steps=many"], "'train.steps' needs a int"),
    (["pretrain", "--config", "/nonexistent.yaml"], "config file not found"),
    (["eval", "--checkpoint", "x"], "required: --evaluator"),
])
def test_user_errors_are_one_line_and_exit_2(args, message):
    result = _cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.5\n  steps: 7\nmodel:\n  name: S/16\n"
                    "objective:\n  options:\n    corrupt_ratio: 0.15\n")
    cfg = load_config(path, ["train.lr=0.25", "data.crop_scale=0.2,0.9",
                             "objective.options.target=pixels"])
    assert (cfg.train.lr, cfg.train.steps, cfg.model.name) == (0.25, 7, "S/16")
    assert cfg.data.crop_scale == (0.2, 0.9)
    assert cfg.objective.options == {"corrupt_ratio": 0.15, "target": "pixels"}
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg


def test_bad_values_and_keys():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(VitsslError, match="needs true or false"):
        load_config(None, ["model.class_token=maybe"])
    with pytest.raises(VitsslError, match="is a section"):
        load_config(None, ["train=3"])
    with pytest.raises(VitsslError, match="did you mean 'model.image_size'"):
        load_config(None, ["model.imagesize=3"])
