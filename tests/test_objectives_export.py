"""Every built-in objective checkpoints the encoder it exports, and vitssl eval scores it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vitssl.cli import main as cli_main
from vitssl.config import load_config
from vitssl.train.checkpoint import latest_checkpoint, load_encoder
from vitssl.train.run import pretrain

EXPORTED = {"masked-patch": "encoder", "mae": "encoder", "supervised": "encoder",
            "dino": "teacher_encoder", "moco-v3": "encoder", "ibot": "teacher_encoder"}
OPTIONS = {"dino": ["out_dim=32", "num_local=1"], "ibot": ["out_dim=32", "num_local=1"],
           "moco-v3": ["hidden_dim=32", "out_dim=16"]}


@pytest.mark.parametrize("objective", sorted(EXPORTED))
def test_checkpoint_exports_the_right_encoder(objective, tmp_path):
    options = [f"objective.options.{kv}" for kv in OPTIONS.get(objective, [])]
    cfg = load_config(None, [f"out={tmp_path}", f"objective.name={objective}", "train.steps=2",
                             "train.batch_size=8", "model.depth=1", "model.image_size=16",
                             "summary_eval.enabled=false", *options])
    pretrain(cfg)
    weights = load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))
    encoder, _ = load_encoder(tmp_path)
    prefix = EXPORTED[objective] + "."
    for key, value in encoder.state_dict().items():
        if key.startswith("pre_logits."):
            assert torch.equal(value, weights[key]), key  # the supervised tanh layer
        else:
            assert torch.equal(value, weights[prefix + key]), key
    assert hasattr(encoder, "pre_logits") == (objective == "supervised")
    features = "pre-logits" if objective == "supervised" else "pooled"
    code = cli_main(["eval", "--evaluator", "few-shot", "--checkpoint", str(tmp_path),
                     "--device", "cpu", "--set", "shots=[2]", "--set", "seeds=1",
                     "--set", f"features={features}"])
    assert code == 0
