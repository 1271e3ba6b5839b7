"""A supervised-trained encoder beats its random initialisation under few-shot and knn.

Digits are easy, so even random ViT features score well; the claim checked is
that training removes at least a third of the errors of the random encoder.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitssl.config import ModelConfig
from vitssl.data.tasks import load_task
from vitssl.models import build_encoder
from vitssl.plugins import get_registry


def _error(top1: float) -> float:
    return 100.0 - top1


def _supervised(encoder: nn.Module, task, steps: int = 100, batch: int = 64) -> nn.Module:
    """Cross-entropy through a linear head on the training split (the test split is unseen)."""
    images = torch.stack([image for image, _ in task.train])
    labels = torch.tensor([label for _, label in task.train])
    head = nn.Linear(encoder.embed_dim, task.num_classes)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    encoder.train()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (batch,), generator=g)
        loss = F.cross_entropy(head(encoder(images[idx])), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return encoder.eval()


@pytest.fixture(scope="module")
def encoders_and_task():
    torch.manual_seed(0)
    random = build_encoder(ModelConfig(name="Ti/8", image_size=16, depth=2)).eval()
    task = load_task("builtin:digits", 16)
    trained = _supervised(copy.deepcopy(random), task)
    return random, trained, task


def test_few_shot_prefers_the_trained_encoder(encoders_and_task):
    random, trained, task = encoders_and_task
    few_shot = get_registry().get("evaluators", "few-shot")(shots=[5, 10], progress=False)
    ours, base = few_shot.run(trained, task), few_shot.run(random, task)
    for key in ("fewshot_5shot_top1", "fewshot_10shot_top1"):
        assert _error(ours[key]) < 2 / 3 * _error(base[key]), (key, ours, base)


def test_knn_prefers_the_trained_encoder(encoders_and_task):
    random, trained, task = encoders_and_task
    knn = get_registry().get("evaluators", "knn")(progress=False)
    ours, base = knn.run(trained, task), knn.run(random, task)
    for key in ("knn_k20_top1", "knn_k200_top1"):
        assert _error(ours[key]) < 2 / 3 * _error(base[key]), (key, ours, base)
