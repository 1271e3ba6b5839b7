"""The end-of-run summary: fair fine-tune comparison, low-data splits, the printed table."""

from __future__ import annotations

import copy

import numpy as np
import torch

from vitssl.config import Config, ModelConfig
from vitssl.data.tasks import load_task
from vitssl.models import build_encoder
from vitssl.train.summary import finetune_comparison, format_summary, low_data_split


def _cfg() -> Config:
    cfg = Config()
    cfg.summary_eval.finetune_steps = 6
    cfg.summary_eval.finetune_seeds = 2
    cfg.summary_eval.finetune_batch_size = 8
    return cfg


def test_identical_encoders_get_identical_fine_tune_numbers():
    task = load_task("builtin:digits", image_size=8)
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(image_size=8, depth=1))
    other = build_encoder(ModelConfig(image_size=8, depth=1))
    scores = finetune_comparison({"a": encoder, "b": copy.deepcopy(encoder), "c": other},
                                 task, _cfg())
    assert scores["a"] == scores["b"]
    assert scores["a"] != scores["c"]  # and the comparison does see a different encoder


def test_low_data_split_takes_n_per_class_per_seed():
    task = load_task("builtin:digits", image_size=8)
    a, b = low_data_split(task, 3, seed=0), low_data_split(task, 3, seed=1)
    labels = np.array([a.train[i][1] for i in range(len(a.train))])
    assert len(a.train) == 30 and np.bincount(labels).tolist() == [3] * 10
    assert a.train.indices != b.train.indices and a.test is task.test


def test_format_summary_shows_gain_and_reference_rows():
    summary = {"run_dir": "runs/x", "steps": 5, "final_loss": 1.0, "final_window": 5,
               "final_metrics": {}, "images_per_s": 10.0, "skipped": 0, "train_s": 1.0,
               "evaluation": {"data": "builtin:digits", "features": "pooled",
                              "finetune": {"per_class": 10, "steps": 100, "seeds": 3,
                                           "pretrained": 70.0, "random_init": 60.0},
                              "few_shot": {k: {"fewshot_5shot_top1": v} for k, v in
                                           (("pretrained", 50.0), ("random_init", 30.0),
                                            ("raw_pixels", 80.0))}}}
    text = format_summary(summary)
    assert "gain +10.00" in text
    assert "5shot" in text and "80.00" in text
