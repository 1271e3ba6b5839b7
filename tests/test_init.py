"""``--init`` / ``model.init``: a run's encoder starts from a vitssl checkpoint or timm's layout
with the same features, resampled position embeddings, teachers included; bad input is one
line. (transformers and ONNX: tests/test_interop_formats.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vitssl.cli import main
from vitssl.config import load_config
from vitssl.errors import VitsslError
from vitssl.export import export
from vitssl.models import build_encoder
from vitssl.plugins import get_registry
from vitssl.train import distributed
from vitssl.train.build import build_run
from vitssl.train.checkpoint import load_encoder, save_checkpoint

BASE = ["model.depth=2", "model.image_size=16", "train.batch_size=4", "train.device=cpu",
        "summary_eval.enabled=false", "data.num_workers=0", "train.steps=2"]


class _Holder(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


def _checkpoint(tmp_path, *overrides: str, seed: int = 1):
    """A vitssl run directory holding one checkpoint of a random (seeded) encoder."""
    cfg = load_config(None, [*BASE, *overrides])
    torch.manual_seed(seed)
    encoder = build_encoder(cfg.model)
    with torch.no_grad():  # not the initialisation a fresh run draws
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    run = tmp_path / f"source-{seed}"
    save_checkpoint(run, 1, _Holder(encoder), cfg, {})
    return run


def _run(tmp_path, *overrides: str):
    """A pretraining run built (not trained) from the base config and ``overrides``."""
    cfg = load_config(None, [*BASE, f"out={tmp_path / 'run'}", *overrides])
    return build_run(cfg, distributed.setup("cpu"))


def _features(encoder, shape=(3, 16, 16)):
    images = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = encoder.eval().forward_features(images)
        return tokens, encoder.forward_head(tokens)


@pytest.mark.parametrize("model", [
    ["model.pool=token", "model.fc_norm=false", "model.image_size=[16,24]"],
    ["model.pool=mean", "model.fc_norm=true"]], ids=["token-nonsquare", "mean"])
def test_vitssl_to_timm_layout_to_init_keeps_the_features(model, tmp_path, capsys):
    source = _checkpoint(tmp_path, *model)
    folder = export(source, "timm", tmp_path / "timm")
    run = _run(tmp_path, *model, f"model.init={folder}")
    expected, _ = load_encoder(source)
    shape = (3, *expected.patch_embed.image_size)
    for ours, theirs in zip(_features(run.objective.encoder, shape), _features(expected, shape),
                            strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    line = capsys.readouterr().err
    assert "init: encoder from" in line and "(timm, sha256" in line and "fresh:" in line
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert saved["init"] == str(folder) and len(saved["init_sha256"]) == 64


def test_a_16px_run_starts_a_32px_run_with_the_interpolated_table(tmp_path, capsys):
    source = _checkpoint(tmp_path, "model.pos_embed=learned")
    run = _run(tmp_path, "model.image_size=32", f"model.init={source}")
    table = load_encoder(source)[0].pos_embed.detach()  # (1, 1 + 4*4, D) at 16 px, patch 4
    grid = table[0, 1:].T.reshape(1, -1, 4, 4)  # "(h w) d -> 1 d h w"
    wanted = F.interpolate(grid, size=(8, 8), mode="bicubic", antialias=True)
    got = run.objective.encoder.pos_embed.detach()
    torch.testing.assert_close(got[0, 0], table[0, 0])  # the class token's entry is kept
    torch.testing.assert_close(got[0, 1:], wanted.reshape(-1, 64).T, atol=1e-6, rtol=0)
    assert "pos_embed resampled 4x4 -> 8x8" in capsys.readouterr().err


@pytest.mark.parametrize("name", get_registry().names("objectives"))
def test_every_objective_starts_its_teacher_from_the_weights(name, tmp_path):
    source = _checkpoint(tmp_path)
    objective = _run(tmp_path, f"objective.name={name}", f"model.init={source}",
                     "model.pos_embed=learned").objective  # mae's own table is fixed
    wanted = load_encoder(source)[0].state_dict()
    encoders = {n: m for n, m in objective.named_modules() if hasattr(m, "forward_features")}
    assert "encoder" in encoders  # the student; teachers and momentum encoders besides
    for module_name, module in encoders.items():
        assert module.state_dict().keys() == wanted.keys(), module_name
        for key, value in module.state_dict().items():
            assert torch.equal(value, wanted[key]), (module_name, key)


def test_init_is_not_applied_again_on_resume_and_refused_with_resume(tmp_path, capsys):
    source = _checkpoint(tmp_path)
    out = tmp_path / "run"
    argv = ["pretrain", "--out", str(out), "--steps", "1", "--device", "cpu",
            *(f"--set={o}" for o in BASE if not o.startswith("train.steps"))]
    assert main([*argv, "--init", str(source)]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())["model"]
    capsys.readouterr()
    assert main([*argv, "--resume", "--init", str(source)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--init cannot be combined with --resume" in err
    for file in source.rglob("*.safetensors"):
        file.unlink()  # a resumed run reads its own checkpoint, never the init weights
    assert main([*argv[:4], "2", *argv[5:], "--resume"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == recorded


def test_bad_init_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    source = _checkpoint(tmp_path)
    (tmp_path / "empty").mkdir()
    pickle = tmp_path / "weights.safetensors"
    torch.save({"pos_embed": torch.zeros(1)}, pickle)
    cases = [
        (str(tmp_path / "empty"), [], "holds none of the accepted layouts"),
        (str(pickle), [], "not a readable safetensors file"),
        (str(source), ["model.name=S/4"], "its width is 192, the run's is 384"),
        (str(source), ["model.name=Ti/8"], "its patch size is 4, the run's is 8"),
    ]
    for init, extra, message in cases:
        out = tmp_path / "never"
        argv = ["pretrain", "--out", str(out), "--init", init, "--device", "cpu",
                *(f"--set={o}" for o in [*BASE, *extra])]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and message in err, (init, err)
        assert not out.exists()


def test_init_pins_its_hash_and_leaves_the_fresh_parts_as_without_it(tmp_path):
    source = _checkpoint(tmp_path)
    with pytest.raises(VitsslError, match="is not model.init_sha256"):
        _run(tmp_path, f"model.init={source}", "model.init_sha256=" + "0" * 64)
    plain = _run(tmp_path / "a").objective.state_dict()
    started = _run(tmp_path / "b", f"model.init={source}").objective.state_dict()
    fresh = [k for k in plain if not k.startswith("encoder.")]
    assert fresh and all(torch.equal(plain[k], started[k]) for k in fresh)
    assert not torch.equal(plain["encoder.pos_embed"], started["encoder.pos_embed"])
