"""transformers and ONNX hops: a transformers ViTModel / Dinov2Model folder read by vitssl gives
its ``last_hidden_state``; vitssl's export loads in ``ViTModel`` and onnxruntime with the
encoder's tokens and pooled features. One transformers import for the whole module."""

from __future__ import annotations

import sys

import pytest
import torch
from test_init import _checkpoint  # noqa: E402 - tests/ is on sys.path under pytest

from vitssl.cli import main
from vitssl.train.checkpoint import load_encoder
from vitssl.weights.layouts import read_encoder

IMAGES = torch.Generator().manual_seed(0)


def _images(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=IMAGES)


def test_onnx_export_gives_the_encoders_features_at_any_batch(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    source = _checkpoint(tmp_path, "model.pool=mean", "model.fc_norm=true",
                         "model.image_size=[16,24]")
    assert main(["export", str(source), "--format", "onnx", "--out", str(tmp_path / "o")]) == 0
    assert "checked: onnxruntime" in capsys.readouterr().err
    session = ort.InferenceSession(str(tmp_path / "o" / "model.onnx"))
    encoder = load_encoder(source)[0]
    images = _images(5, 3, 16, 24)
    features, tokens = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        # float32 rounding of un-normalised tokens (fc_norm) of magnitude ~10
        torch.testing.assert_close(torch.from_numpy(features), encoder(images), atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(torch.from_numpy(tokens), encoder.forward_features(images),
                                   atol=1e-4, rtol=1e-4)


def test_onnx_without_onnx_installed_is_one_line(tmp_path, capsys, monkeypatch):
    source = _checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert main(["export", str(source), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "pip install 'vitssl[export]'" in err
    assert not (tmp_path / "o").exists()


def test_transformers_folders_in_and_vitssl_out(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                 patch_size=4, layer_norm_eps=1e-6)
    vit = transformers.ViTModel(transformers.ViTConfig(intermediate_size=64, **small)).eval()
    dinov2 = transformers.Dinov2Model(transformers.Dinov2Config(**small)).eval()
    with torch.no_grad():  # LayerScale away from its initial 1, so folding it is tested
        for name, p in dinov2.named_parameters():
            if "lambda1" in name:
                p.uniform_(0.5, 1.5)
    images = _images(2, 3, 16, 16)
    for model in (vit, dinov2):  # in: their folder -> our encoder, equal tokens
        folder = tmp_path / type(model).__name__
        model.save_pretrained(folder)
        ours = read_encoder(folder).encoder
        with torch.no_grad():
            torch.testing.assert_close(ours.forward_features(images),
                                       model(pixel_values=images).last_hidden_state,
                                       atol=1e-5, rtol=0)
    # out: our mean-pooled non-square runs (one of 6 bands) -> ViTModel, equal tokens and
    # pooled features
    for fc_norm, bands in (("false", 3), ("true", 3), ("true", 6)):
        six = [f"model.in_chans={bands}", f"data.mean={[0.5] * bands}",
               f"data.std={[0.25] * bands}"] if bands != 3 else []
        source = _checkpoint(tmp_path, "model.pool=mean", f"model.fc_norm={fc_norm}",
                             "model.image_size=[16,24]", *six, seed=2 + (fc_norm == "true") + bands)
        out = tmp_path / f"exported-{fc_norm}-{bands}"
        assert main(["export", str(source), "--format", "transformers", "--out", str(out)]) == 0
        model, info = transformers.ViTModel.from_pretrained(out, output_loading_info=True)
        assert not any(info.values()), info
        assert model.config.num_channels == bands
        encoder = load_encoder(source)[0]
        images = _images(3, bands, 16, 24)
        with torch.no_grad():
            outputs = model.eval()(pixel_values=images, output_hidden_states=True)
            if fc_norm == "true":  # the norm follows pooling: ViTModel.layernorm holds it
                tokens = outputs.hidden_states[-1]
                pooled = model.layernorm(tokens[:, 1:].mean(1))
            else:
                tokens = outputs.last_hidden_state
                pooled = tokens[:, 1:].mean(1)
            torch.testing.assert_close(tokens, encoder.forward_features(images), atol=1e-5,
                                       rtol=0)
            torch.testing.assert_close(pooled, encoder(images), atol=1e-5, rtol=0)
            back = read_encoder(out).encoder  # and vitssl reads its export back as itself
            torch.testing.assert_close(back(images), encoder(images), atol=1e-5, rtol=0)
        assert "mean(dim=1)" in (out / "README.md").read_text()
        assert "pooled = " in capsys.readouterr().out
