"""vitssl.Objective: defaults, options the data supplies, options a factory refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vitssl
from vitssl.config import ModelConfig
from vitssl.models import build_encoder
from vitssl.objective import DataInfo, build_objective, objective_options

DIGITS = DataInfo("builtin:digits", labelled=True, num_classes=10)
UNLABELLED = DataInfo("folder:x", labelled=False)


class _Classify(vitssl.Objective):
    requires_labels = True

    def __init__(self, encoder, num_classes: int, scale: float = 1.0):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.embed_dim, num_classes)

    @classmethod
    def options_from_data(cls, data):
        return {"num_classes": data.num_classes}

    def forward(self, batch):
        return {"loss": self.head(self.encoder(batch["image"])).logsumexp(-1).mean()}


def _encoder():
    return build_encoder(ModelConfig(image_size=8, depth=1))


def test_the_base_class_defaults_do_nothing():
    objective = _Classify(_encoder(), num_classes=3)
    assert objective.views((8, 8), None) is None
    assert objective.exports() == {"encoder": "encoder"}
    objective.check_batch({"image": torch.zeros(1)})
    objective.before_optimizer_step(0, 1)
    objective.after_optimizer_step(0, 1)


def test_data_supplies_options_and_the_user_wins():
    assert objective_options("c", _Classify, {}, DIGITS) == {"num_classes": 10}
    assert objective_options("c", _Classify, {"num_classes": 4}, DIGITS) == {"num_classes": 4}
    with pytest.raises(vitssl.VitsslError, match="needs labels but 'folder:x' is unlabelled"):
        objective_options("c", _Classify, {}, UNLABELLED)


def test_unknown_options_are_refused_before_the_factory_runs():
    with pytest.raises(vitssl.VitsslError,
                       match="does not accept options .*unexpected keyword argument 'colour'"):
        build_objective("c", _Classify, _encoder(), {"num_classes": 3, "colour": 1})
