"""finetune: learns on a copy, resamples position embeddings, layer-wise lr decay groups,
accumulates gradients over micro-batches."""

import pytest
import torch
from torch.utils.data import TensorDataset
from vitssl_plugins.finetune import Finetune, _Classifier, set_resolution

from vitssl.config import ModelConfig
from vitssl.data.tasks import Task, load_task
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.models.pos_embed import resample_pos_embed
from vitssl.plugins import get_registry


def _encoder(depth=1, patch=4, size=16, seed=0):
    torch.manual_seed(seed)
    return build_encoder(ModelConfig(name=f"Ti/{patch}", image_size=size, depth=depth))


@pytest.fixture(scope="module")
def digits16():
    return load_task("builtin:digits", 16)


def test_learns_on_a_copy_and_leaves_the_encoder_untouched(digits16):
    encoder = _encoder(patch=8)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    finetune = get_registry().get("evaluators", "finetune")(
        optimizer="adamw", lr=1e-3, steps=60, batch_size=32, progress=False)
    metrics = finetune.run(encoder, digits16)
    assert metrics["finetune_top1"] > 50  # chance is 10
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_zero_initialised_head_predicts_one_class_without_learning(digits16):
    metrics = Finetune(lr=0.0, steps=1, batch_size=8, progress=False).run(_encoder(patch=8),
                                                                     digits16)
    labels = torch.tensor([label for _, label in digits16.test])
    # With lr 0 the head stays at its zero init: equal logits, argmax class 0 everywhere.
    assert metrics["finetune_top1"] == pytest.approx(100 * (labels == 0).double().mean().item())


def test_higher_resolution_resamples_position_embeddings_once():
    encoder = _encoder(size=16).eval()
    copy = _encoder(size=16).eval()
    set_resolution(copy, 24)
    assert copy.grid_size == (6, 6) and copy.pos_embed.shape[1] == 1 + 36
    expected = resample_pos_embed(encoder.pos_embed, (4, 4), (6, 6), num_prefix=1)
    torch.testing.assert_close(copy.pos_embed.data, expected)
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():  # the source encoder resamples on the fly, identically
        torch.testing.assert_close(copy(images), encoder(images))


def test_layer_decay_scales_each_layer():
    depth, decay = 3, 0.5
    model = _Classifier(_encoder(depth=depth), 10)
    groups = Finetune(layer_decay=decay, optimizer="adamw").param_groups(model)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["head.weight"])] == 1.0
    assert scale_of[id(named["encoder.norm.weight"])] == 1.0
    for i in range(depth):
        assert scale_of[id(named[f"encoder.blocks.{i}.mlp.fc1.weight"])] == decay ** (depth - i)
    assert scale_of[id(named["encoder.pos_embed"])] == decay ** (depth + 1)
    assert scale_of[id(named["encoder.patch_embed.proj.weight"])] == decay ** (depth + 1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(named["head.weight"]) in decayed and id(named["head.bias"]) not in decayed
    assert id(named["encoder.pos_embed"]) not in decayed
    sgd_groups = Finetune().param_groups(model)  # the paper's recipe: no weight decay
    assert all(g["weight_decay"] == 0 for g in sgd_groups)


def _tensor_task(train_size: int, seed: int = 0) -> Task:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(train_size + 20, 3, 16, 16, generator=gen)
    labels = torch.randint(0, 4, (train_size + 20,), generator=gen)
    return Task("tensors", TensorDataset(images[:train_size], labels[:train_size]),
                TensorDataset(images[train_size:], labels[train_size:]), num_classes=4)


@pytest.mark.parametrize("train_size", [48, 10])  # full batches of 16; one short batch of 10
def test_accumulated_micro_batches_give_the_full_batch_update(train_size):
    task = _tensor_task(train_size)
    encoder = _encoder(patch=8)
    init = {k: v.clone() for k, v in _Classifier(encoder, 4).state_dict().items()}
    fits, scores = {}, {}
    for accum in (1, 4):
        finetune = Finetune(lr=0.1, steps=4, batch_size=16, warmup_steps=1, accum_steps=accum,
                            grad_clip=0.0, progress=False)  # no clipping: scale errors show
        fits[accum] = finetune.fit(encoder, task)
        scores[accum] = finetune.run(encoder, task)
    (whole, whole_losses), (accumulated, accum_losses) = fits[1], fits[4]
    torch.testing.assert_close(accum_losses, whole_losses, rtol=1e-5, atol=1e-6)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    moved = max((value - init[name]).abs().max().item()
                for name, value in whole.state_dict().items())
    assert moved > 1e-2  # the steps changed the weights, so the comparison means something
    assert scores[4] == pytest.approx(scores[1], rel=1e-5)


def test_accumulation_options_are_checked():
    assert Finetune(batch_size=512, micro_batch=64).accum_steps == 8
    assert Finetune(batch_size=32, micro_batch=64).accum_steps == 1  # one pass is enough
    assert Finetune(batch_size=16, accum_steps=4).accum_steps == 4
    with pytest.raises(VitsslError, match="accum_steps"):
        Finetune(batch_size=16, accum_steps=3)
    with pytest.raises(VitsslError, match="micro_batch"):
        Finetune(batch_size=512, micro_batch=100)
    with pytest.raises(VitsslError, match="not both"):
        Finetune(batch_size=512, micro_batch=64, accum_steps=8)
