"""The supervised objective: head, losses and metrics against float64 references; training."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vitssl.config import ModelConfig, load_config
from vitssl.data.digits import Digits
from vitssl.data.transforms import eval_transform, normalize
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.plugins import get_registry


def _objective(num_classes=10, depth=1, **options):
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name="Ti/4", image_size=8, depth=depth))
    factory = get_registry().get("objectives", "supervised")
    objective = factory(encoder=encoder, num_classes=num_classes, **options)
    with torch.no_grad():  # the classifier starts at zero; give it weights to test with
        objective.head.weight.normal_(0, 0.5)
        objective.head.bias.normal_(0, 0.5)
    return objective.eval()


def _batch(num_classes=10, n=16):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 3, 8, 8, generator=g),
            "label": torch.randint(0, num_classes, (n,), generator=g)}


def test_head_is_tanh_pre_logits_then_linear():
    objective = _objective()
    batch = _batch()
    with torch.no_grad():
        pooled = objective.encoder(batch["image"]).double()
        fc, head = objective.pre_logits[0], objective.head
        hidden = torch.tanh(pooled @ fc.weight.double().T + fc.bias.double())
        reference = hidden @ head.weight.double().T + head.bias.double()
        torch.testing.assert_close(objective.logits(batch["image"]).double(), reference,
                                   atol=1e-5, rtol=1e-5)
    plain = _objective(pre_logits=False)
    assert not any(isinstance(m, torch.nn.Tanh) for m in plain.modules())
    with torch.no_grad():
        pooled = plain.encoder(batch["image"])
        torch.testing.assert_close(plain.logits(batch["image"]), plain.head(pooled))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_loss_and_top_k_match_reference(smoothing):
    objective = _objective(label_smoothing=smoothing)
    batch = _batch()
    with torch.no_grad():
        out = objective(batch)
        logits = objective.logits(batch["image"]).double()
    labels, k = batch["label"], 10
    targets = F.one_hot(labels, k).double() * (1 - smoothing) + smoothing / k
    log_p = logits - logits.exp().sum(1, keepdim=True).log()
    expected = -(targets * log_p).sum(1).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-5)
    ranks = logits.argsort(dim=1, descending=True)
    top1 = (ranks[:, 0] == labels).double().mean().item()
    top5 = (ranks[:, :5] == labels[:, None]).any(1).double().mean().item()
    assert out["top1"] == pytest.approx(top1) and out["top5"] == pytest.approx(top5)
    # metrics stay on the device: a 0-d tensor, read by the loop at logging steps
    assert isinstance(out["top1"], torch.Tensor) and out["top1"].ndim == 0


def test_sigmoid_loss_matches_reference_for_indices_and_multi_hot():
    objective = _objective(num_classes=4, loss="sigmoid")
    batch = _batch(num_classes=4)
    with torch.no_grad():
        logits = objective.logits(batch["image"]).double()
        multi_hot = (torch.rand(16, 4, generator=torch.Generator().manual_seed(2)) > 0.5)
        for labels, targets in ((batch["label"], F.one_hot(batch["label"], 4).double()),
                                (multi_hot.long(), multi_hot.double())):
            out = objective({"image": batch["image"], "label": labels})
            p = torch.sigmoid(logits)
            expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum(1).mean()
            assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-5)
            hit = targets.gather(1, logits.argmax(1, keepdim=True))[:, 0] > 0
            assert out["top1"] == pytest.approx(hit.double().mean().item())
            assert "top5" not in out  # only 4 classes


def test_zero_initialised_classifier_starts_at_uniform_loss():
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name="Ti/4", image_size=8, depth=1))
    objective = get_registry().get("objectives", "supervised")(encoder=encoder, num_classes=7)
    assert objective.requires_labels
    out = objective(_batch(num_classes=7))
    assert out["loss"].item() == pytest.approx(math.log(7), abs=1e-6)


def test_user_errors_are_clear():
    encoder = build_encoder(ModelConfig(name="Ti/4", image_size=8, depth=1))
    factory = get_registry().get("objectives", "supervised")
    with pytest.raises(VitsslError, match="num_classes"):
        factory(encoder=encoder)
    with pytest.raises(VitsslError, match="accepted: softmax, sigmoid"):
        factory(encoder=encoder, num_classes=3, loss="hinge")
    objective = factory(encoder=encoder, num_classes=3)
    with pytest.raises(VitsslError, match="needs labelled data"):
        objective.check_batch({"image": torch.randn(2, 3, 8, 8)})
    with pytest.raises(VitsslError, match=r"labels must lie in \[0, 3\)"):
        objective.check_batch({"image": torch.randn(2, 3, 8, 8), "label": torch.tensor([0, 3])})
    with pytest.raises(VitsslError, match=r"multi-hot \(B, 3\)"):
        objective.check_batch({"label": torch.ones(2, 4)})


def _test_accuracy(objective, image_size):
    test = Digits("test")
    transform = eval_transform(image_size)
    images = torch.stack([transform(test[i][0]) for i in range(len(test))])
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    images = normalize(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        predictions = objective.eval().logits(images).argmax(1)
    return (predictions == labels).float().mean().item()


def test_pretraining_on_digits_beats_chance_on_held_out_split(tmp_path):
    from vitssl.train.run import pretrain

    cfg = load_config(overrides=[
        "objective.name=supervised",  # num_classes comes from the data
        "data.spec=builtin:digits", "data.augment=false",
        "model.name=Ti/4", "model.image_size=8", "model.depth=1",
        "train.steps=200", "train.batch_size=64", "train.lr=0.001", "train.warmup_steps=20",
        "train.checkpoint_every=200", "summary_eval.enabled=false", f"out={tmp_path}"])
    pretrain(cfg)
    trained = get_registry().get("objectives", "supervised")(
        encoder=build_encoder(cfg.model), num_classes=10)
    untrained_accuracy = _test_accuracy(trained, 8)
    weights = load_file(str(tmp_path / "checkpoints" / "step-00000200" / "model.safetensors"))
    trained.load_state_dict(weights)
    accuracy = _test_accuracy(trained, 8)
    assert untrained_accuracy < 0.2
    assert accuracy > 0.8, accuracy  # 10 classes: chance is 0.1
