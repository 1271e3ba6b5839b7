"""The end-of-run summary: fair comparisons, low-data splits, configured evaluators."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vitssl.config import Config, ModelConfig, load_config
from vitssl.data.tasks import load_task
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.train.summary import compare, format_summary, low_data_split, summary_evaluation

FINETUNE = {"per_class": 10, "draws": 2, "options": {"steps": 6, "batch_size": 8}}


def test_identical_encoders_get_identical_fine_tune_numbers():
    task = load_task("builtin:digits", image_size=8)
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(image_size=8, depth=1))
    other = build_encoder(ModelConfig(image_size=8, depth=1))
    scores = compare("finetune", FINETUNE, {"a": encoder, "b": copy.deepcopy(encoder),
                                            "c": other}, task)
    assert scores["a"]["finetune_top1"] == scores["b"]["finetune_top1"]
    assert scores["a"]["finetune_top1"] != scores["c"]["finetune_top1"]  # it sees the encoder


def test_low_data_split_takes_n_per_class_per_seed():
    task = load_task("builtin:digits", image_size=8)
    a, b = low_data_split(task, 3, seed=0), low_data_split(task, 3, seed=1)
    labels = np.array([a.train[i][1] for i in range(len(a.train))])
    assert len(a.train) == 30 and np.bincount(labels).tolist() == [3] * 10
    assert a.train.indices != b.train.indices and a.test is task.test


def test_summary_runs_the_configured_evaluators_and_warns_on_missing_ones(capsys):
    cfg = load_config(None, ["model.image_size=8", "model.depth=1",
                             "summary_eval.evaluators={knn: {options: {k: [5]}, compare: "
                             "[pretrained, raw_pixels]}, no-such-evaluator: {}}"])
    torch.manual_seed(1)
    encoder = build_encoder(cfg.model)
    out = summary_evaluation(encoder, cfg, torch.device("cpu"))
    assert set(out) == {"data", "knn"} and out["data"] == "builtin:digits"
    assert set(out["knn"]) == {"settings", "pretrained", "raw_pixels"}
    assert out["knn"]["raw_pixels"]["knn_k5_top1"] > 80  # pixels of digits are easy
    assert "warning: summary evaluator 'no-such-evaluator' skipped" in capsys.readouterr().err
    cfg.summary_eval.evaluators = {"knn": {"k": [5]}}  # an option outside ``options``
    with pytest.raises(VitsslError, match=r"evaluators.knn: unknown \['k'\]"):
        summary_evaluation(encoder, cfg, torch.device("cpu"))


def test_format_summary_shows_gain_and_reference_rows():
    summary = {"run_dir": "runs/x", "steps": 5, "final_loss": 1.0, "final_window": 5,
               "final_metrics": {}, "images_per_s": 10.0, "skipped": 0, "train_s": 1.0,
               "evaluation": {"data": "builtin:digits",
                              "finetune": {"settings": {"per_class": 10, "draws": 3},
                                           "pretrained": {"finetune_top1": 70.0},
                                           "random_init": {"finetune_top1": 60.0}},
                              "few-shot": {"settings": {}, **{
                                  k: {"fewshot_5shot_top1": v} for k, v in
                                  (("pretrained", 50.0), ("random_init", 30.0),
                                   ("raw_pixels", 80.0))}}}}
    text = format_summary(summary)
    assert "+10.00" in text and "+20.00" in text
    assert "10 labelled images per class, mean of 3 draws" in text
    assert "fewshot_5shot" in text and "80.00" in text


def test_default_summary_is_the_fine_tune_comparison_and_few_shot():
    evaluators = Config().summary_eval.evaluators
    assert list(evaluators) == ["finetune", "few-shot"]
    assert evaluators["finetune"]["per_class"] == 10 and evaluators["finetune"]["draws"] == 3


def test_large_splits_are_cut_to_seeded_subsets_and_small_ones_kept():
    from vitssl.train.summary import _labels, capped

    task = load_task("builtin:digits", image_size=8)
    assert capped(task, 10_000, 2_000).train is task.train  # digits: under the caps
    cut, again = capped(task, 300, 100), capped(task, 300, 100)
    assert len(cut.train) == 300 and len(cut.test) == 100
    assert cut.train.indices == again.train.indices  # seeded: the same subset each run
    labels = _labels(cut.train)
    assert labels.tolist() == [cut.train[i][1] for i in range(20)] + labels[20:].tolist()
    assert len(set(labels.tolist())) == 10
