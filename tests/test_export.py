"""`vitssl export`: a 3-step run, exported, loads in timm with the encoder's features."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vitssl.cli import main
from vitssl.config import load_config
from vitssl.train.checkpoint import load_encoder
from vitssl.train.run import pretrain

timm = pytest.importorskip("timm")

RUNS = {  # name -> config overrides of a 3-step run
    "mean": ["model.pool=mean", "model.fc_norm=true"],
    "token-nonsquare": ["model.pool=token", "model.fc_norm=false", "model.image_size=[16,24]"],
    "hybrid": ["model.name=S/32", "model.stem=resnet26-hybrid", "model.image_size=64",
               "model.pool=token", "model.fc_norm=false",
               "train.batch_size=4"],
    "dino": ["objective.name=dino", "objective.options.out_dim=32",
             "objective.options.num_local=1"],
    "supervised": ["objective.name=supervised"],
    "mae-sincos": ["objective.name=mae", "model.pos_embed=sincos", "model.pool=mean",
                   "model.fc_norm=true"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    made = {}

    def run(name: str):
        if name not in made:
            out = tmp_path_factory.mktemp(name)
            pretrain(load_config(None, [
                f"out={out}", "model.depth=1", "model.image_size=16", "train.steps=3",
                "train.batch_size=8", "train.device=cpu", "summary_eval.enabled=false",
                *RUNS[name]]))
            made[name] = out
        return made[name]
    return run


def _export(run, fmt, out, capsys) -> dict:
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"local-dir:{out}" in printed
    return json.loads((out / "config.json").read_text())


def _assert_same_features(model, encoder, config):
    images = torch.randn(3, *config["pretrained_cfg"]["input_size"])
    with torch.no_grad():
        ours = encoder.forward_features(images)
        torch.testing.assert_close(model.forward_features(images), ours, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(images), encoder.forward_head(ours), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["mean", "token-nonsquare", "hybrid"])
def test_timm_export_loads_by_name_with_the_file_overlay(name, runs, tmp_path, capsys):
    run = runs(name)
    config = _export(run, "timm", tmp_path, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    model = timm.create_model(  # the README's lines
        config["architecture"], pretrained=True, num_classes=0,
        pretrained_cfg_overlay=dict(config["pretrained_cfg"], file=str(tmp_path /
                                                                       "model.safetensors")),
        **config["model_args"]).eval()
    encoder, cfg = load_encoder(run)
    _assert_same_features(model, encoder, config)
    data = timm.data.resolve_model_data_config(model)
    assert tuple(data["input_size"]) == (3, *encoder.patch_embed.image_size)
    assert tuple(data["mean"]) == tuple(cfg.data.mean) and tuple(data["std"]) == \
        tuple(cfg.data.std)
    pool = {"mean": "avg", "token-nonsquare": "token", "hybrid": "token"}[name]
    assert model.global_pool == pool and model.num_classes == 0


@pytest.mark.parametrize("name", ["mean", "hybrid", "dino"])
def test_hf_export_loads_through_local_dir(name, runs, tmp_path, capsys):
    run = runs(name)
    out = tmp_path / "hub"
    config = _export(run, "hf", out, capsys)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json",
                                                     "model.safetensors"]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    encoder, _ = load_encoder(run)
    _assert_same_features(model, encoder, config)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n")
    objective = {"dino": "dino"}.get(name, "masked-patch")
    for fact in (f"`{objective}`", "`builtin:digits`", "| Steps | 3 of batch"):
        assert fact in card


def test_the_exported_encoder_is_dinos_teacher(runs, tmp_path, capsys):
    run = runs("dino")
    _export(run, "timm", tmp_path, capsys)
    exported = load_file(str(tmp_path / "model.safetensors"))
    (weights,) = run.glob("checkpoints/step-*/model.safetensors")
    stored = load_file(str(weights))
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(exported[key], stored[f"teacher_encoder.{key}"])
    assert not torch.equal(exported[key], stored[f"encoder.{key}"])  # not the student
    assert json.loads((tmp_path / "config.json").read_text())["vitssl"]["exported"] == \
        "teacher_encoder"


@pytest.mark.parametrize("fmt", ["timm", "hf"])
def test_fixed_sincos_position_embeddings_survive_the_checkpoint_and_the_export(
        fmt, runs, tmp_path, capsys):
    run = runs("mae-sincos")
    encoder, cfg = load_encoder(run)
    assert cfg.model.pos_embed == "sincos" and encoder.fixed_pos_embed
    table = encoder.sincos_table(encoder.grid_size)
    torch.testing.assert_close(encoder.pos_embed, table, atol=0, rtol=0)  # trained 3 steps
    config = _export(run, fmt, tmp_path, capsys)
    assert config["vitssl"]["pos_embed"] == "sincos"
    torch.testing.assert_close(load_file(tmp_path / "model.safetensors")["pos_embed"], table,
                               atol=0, rtol=0)
    model = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    torch.testing.assert_close(model.pos_embed.detach(), table, atol=0, rtol=0)
    _assert_same_features(model, encoder, config)


def test_supervised_export_leaves_out_the_pre_logits_layer(runs, tmp_path, capsys):
    run = runs("supervised")
    _export(run, "timm", tmp_path, capsys)
    exported = load_file(str(tmp_path / "model.safetensors"))
    assert not [k for k in exported if k.startswith(("pre_logits", "head"))]
    assert "pos_embed" in exported and "blocks.0.mlp.fc1.weight" in exported


def test_model_card_carries_the_run_summary(runs, tmp_path, capsys):
    run = runs("mean")
    summary = json.loads((run / "summary.json").read_text())
    summary["evaluation"] = {"data": "builtin:digits", "few-shot": {
        "settings": {}, "pretrained": {"5shot_top1": 41.25},
        "random_init": {"5shot_top1": 27.5}, "raw_pixels": {"5shot_top1": 85.5}}}
    (run / "summary.json").write_text(json.dumps(summary))
    _export(run, "hf", tmp_path, capsys)
    card = (tmp_path / "README.md").read_text()
    assert "| few-shot | 5shot_top1 | 41.25 | 27.50 | 85.50 |" in card
    assert f"{summary['final_loss']:.4f}" in card


def test_a_hybrid_timm_cannot_build_is_refused_in_one_line(tmp_path, capsys):
    pretrain(load_config(None, [
        f"out={tmp_path / 'run'}", "model.depth=1", "model.image_size=16", "train.steps=1",
        "train.batch_size=4", "train.device=cpu", "summary_eval.enabled=false",
        "model.stem=resnet-tiny-hybrid"]))
    capsys.readouterr()
    code = main(["export", str(tmp_path / "run"), "--format", "hf", "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cannot export to timm: a hybrid stem with layers (2,)" in err
    assert not (tmp_path / "out").exists()


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys):
    pickled = tmp_path / "model.pt"
    torch.save({"pos_embed": torch.zeros(1)}, pickled)
    fake = tmp_path / "fake" / "model.safetensors"
    fake.parent.mkdir()
    fake.write_bytes(pickled.read_bytes())
    cases = [
        ([str(tmp_path / "no-such-run"), "--format", "timm"], "checkpoint not found"),
        ([str(pickled), "--format", "timm"], "not a .safetensors file"),
        ([str(fake), "--format", "hf"], "not a readable safetensors file"),
        ([str(runs("mean")), "--format", "tflite"], "invalid choice: 'tflite'"),
        ([str(runs("mean"))], "required: --format"),
    ]
    for argv, message in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
