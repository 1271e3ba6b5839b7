"""Every registered objective, with no list to edit: its forward never reads a device value on
the host, two steps resume exactly, and its exported encoder round-trips through timm."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vitssl.cli import main as cli_main
from vitssl.config import ModelConfig, load_config
from vitssl.models import build_encoder
from vitssl.plugins import get_registry
from vitssl.train.checkpoint import list_checkpoints, load_encoder, read_metadata
from vitssl.train.run import pretrain

OBJECTIVES = get_registry().names("objectives")


def _host_batch(objective, size: int = 16, batch_size: int = 4) -> dict:
    """A batch as the loop hands it over: views when the objective makes them."""
    torch.manual_seed(0)
    batch = {"sample_seed": torch.arange(batch_size), "step": 1, "total_steps": 4,
             "label": torch.arange(batch_size) % 2}
    views = objective.views((size, size), None)
    if views is None:
        batch["image"] = torch.randn(batch_size, 3, size, size)
        batch["pixels"] = batch["image"].sigmoid()
    else:
        shapes = views(torch.zeros(3, size, size, dtype=torch.uint8))
        batch["views"] = {k: torch.randn(batch_size, *v.shape) for k, v in shapes.items()}
    return batch


def _on(device: str, batch: dict) -> dict:
    """``batch`` as the loop moves it: every tensor on ``device`` but the host's seeds."""
    def move(k, v):
        if isinstance(v, dict):
            return {a: move(a, b) for a, b in v.items()}
        return v.to(device) if isinstance(v, torch.Tensor) and k != "sample_seed" else v
    return {k: move(k, v) for k, v in batch.items()}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_forward_and_backward_read_no_device_value_on_the_host(name):
    # On the meta device a tensor has no values: .item(), .tolist(), int(), float(), bool()
    # and boolean-mask indexing all raise, so a step that would wait for a GPU fails here.
    factory = get_registry().get("objectives", name)
    options = {"num_classes": 2} if factory.requires_labels else {}
    objective = factory(encoder=build_encoder(ModelConfig(image_size=16, depth=1)), **options)
    batch = _host_batch(objective)
    objective.check_batch(batch)
    out = objective.to("meta")(_on("meta", batch))
    out["loss"].backward()
    assert out["loss"].shape == ()
    assert [k for k in out if k.startswith("loss_")], f"{name} reports no loss_* term"


def _cfg(name: str, out, *extra: str):
    return load_config(None, [f"out={out}", f"objective.name={name}", "train.steps=2",
                              "train.checkpoint_every=1", "train.batch_size=8",
                              "model.depth=1", "model.image_size=16", "train.device=cpu",
                              "summary_eval.enabled=false", *extra])


@pytest.mark.parametrize("name", OBJECTIVES)
def test_two_steps_resume_exactly_and_the_export_round_trips(name, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(_cfg(name, run))
    (_, first), (_, last) = list_checkpoints(run)
    weights = load_file(str(last / "model.safetensors"))
    logged = _logged(run)
    shutil.rmtree(last)  # as if killed after the first checkpoint
    (run / "summary.json").unlink(missing_ok=True)
    pretrain(_cfg(name, run), resume=True)
    resumed = load_file(str(list_checkpoints(run)[-1][1] / "model.safetensors"))
    assert resumed.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(resumed[key], value), key
    assert _logged(run) == logged

    encoder, _ = load_encoder(run)
    exported = read_metadata(last)["exports"]["encoder"]
    for key, value in encoder.state_dict().items():
        if not key.startswith("pre_logits."):
            assert torch.equal(value, weights[f"{exported}.{key}"]), key
    timm = pytest.importorskip("timm")
    assert cli_main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    model = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images),
                                   encoder.forward_features(images), atol=1e-5, rtol=0)
    capsys.readouterr()


def _logged(run) -> list[dict]:
    """The run's logged steps without their timing."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in lines]


@pytest.mark.parametrize("name", OBJECTIVES)
def test_two_steps_on_six_band_images(name, six_bands, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(_cfg(name, run, f"data.spec=folder:{six_bands / 'tiff'}", "data.num_workers=0",
                  "data.mean=[0.5,0.5,0.5,0.5,0.5,0.5]", "data.std=[0.3,0.3,0.3,0.3,0.3,0.3]"))
    losses = [entry["loss"] for entry in _logged(run)]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    encoder, cfg = load_encoder(run)
    assert encoder.in_chans == cfg.model.in_chans == 6
    assert encoder.forward_features(torch.randn(1, 6, 16, 16)).isfinite().all()
    capsys.readouterr()
