"""``vtab``: the VTAB-1k protocol on one task (:mod:`vitssl.eval.vtab_protocol`).

Each training is a run of ``finetune`` (on its own copy of the encoder; protocol epochs become
steps of full batches) or, with ``adapt="linear-probe"``, of ``linear-probe`` (frozen features
cached across the sweep; steps become epochs); the encoder handed in is never changed. Splits:
:mod:`vitssl.eval.vtab_splits` (``vtab1k:`` lists as shipped, else 800/200 carved from train).

Options: ``protocol``, ``adapt``, ``image_size`` (the task's size; ``finetune`` resamples its
copy's position embeddings), ``features`` (with ``adapt="linear-probe"``: the frozen feature
probed; ``finetune`` trains on the pooled output), ``options`` (extra delegate options, e.g.
``{eval_batch_size: 64}``), ``seed``.

Reported: ``vtab_top1`` (test), ``vtab_val200_top1`` (the chosen setting), ``vtab_chosen_lr`` /
``vtab_chosen_steps`` (or ``_epochs``), ``vtab_val200_top1[SETTING]`` per candidate and
``vtab_time_s``.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from torch import nn

import vitssl
from vitssl.errors import VitsslError
from vitssl.eval.features import parse_features
from vitssl.eval.vtab_protocol import (
    ADAPTATIONS,
    Setting,
    VtabOutcome,
    pick_top1,
    protocol_settings,
    run_protocol,
)
from vitssl.eval.vtab_splits import as_vtab_task
from vitssl.plugins import get_registry


def linear_probe_options(options: dict[str, Any], train_size: int) -> dict[str, Any]:
    """A protocol setting as ``linear-probe`` options (SGD momentum 0.9, cosine, one lr / wd);
    steps become epochs of full batches, as linear-probe trains."""
    batch = int(options["batch_size"])
    epochs = (int(options["epochs"]) if "epochs" in options else max(1, math.ceil(
        int(options["steps"]) / max(1, train_size // min(batch, train_size)))))
    return {"optimizer": "sgd", "lr": float(options["lr"]),
            "weight_decay": float(options.get("weight_decay", 0.0)), "epochs": epochs,
            "batch_size": batch}


def finetune_options(options: dict[str, Any], train_size: int) -> dict[str, Any]:
    """A protocol setting as ``finetune`` options; epochs become steps of full batches."""
    batch = int(options["batch_size"])
    per_epoch = max(1, train_size // batch)
    steps = (int(options["steps"]) if "steps" in options
             else int(options["epochs"]) * per_epoch)
    warmup = (int(options["warmup_steps"]) if "warmup_steps" in options
              else int(options.get("warmup_epochs", 0)) * per_epoch)
    return {"optimizer": options["optimizer"], "lr": float(options["lr"]),
            "weight_decay": float(options.get("weight_decay", 0.0)), "steps": steps,
            "batch_size": batch, "warmup_steps": warmup,
            "grad_clip": float(options.get("grad_clip", 0.0))}


TRANSLATE = {"finetune": finetune_options, "linear-probe": linear_probe_options}


class Vtab:
    """VTAB-1k protocol: sweep on train800 → val200, retrain on train800val200, test top-1."""

    def __init__(self, protocol: str = "paper", adapt: str = "finetune",
                 options: dict[str, Any] | None = None, image_size: int | None = None,
                 seed: int = 0, progress: bool = True, features: str = "pooled") -> None:
        if adapt not in ADAPTATIONS:
            raise VitsslError(f"vtab: unknown adapt '{adapt}'; accepted: "
                              f"{', '.join(ADAPTATIONS)}")
        self.protocol = protocol
        self.settings = protocol_settings(protocol)
        if adapt == "linear-probe" and any(s.options["optimizer"] != "sgd"
                                           for s in self.settings):
            raise VitsslError(f"vtab: protocol '{protocol}' trains with AdamW, which "
                              f"linear-probe does not offer; use protocol paper or quick")
        self.adapt = adapt
        self.extra = dict(options or {})
        features = parse_features(self.extra.pop("features", features))
        if features != "pooled":
            if adapt != "linear-probe":
                raise VitsslError(f"vtab: features='{features}' needs adapt=linear-probe; "
                                  f"finetune trains on the encoder's pooled output")
            self.extra["features"] = features
        self.image_size = None if image_size is None else int(image_size)
        if self.image_size is not None and adapt == "finetune":
            self.extra.setdefault("image_size", self.image_size)
        self.seed = int(seed)
        self.progress = bool(progress)

    def _train_and_score(self, encoder: nn.Module, task: Any, setting: Setting) -> float:
        factory = get_registry().get("evaluators", self.adapt)
        options = TRANSLATE[self.adapt](setting.options, len(task.train))
        evaluator = factory(**{**options, "seed": self.seed, "progress": self.progress,
                               **self.extra})
        return pick_top1(evaluator.run(encoder, task), self.adapt)

    def _log(self, message: str) -> None:
        if self.progress:
            print(f"vtab: {message}", file=sys.stderr, flush=True)

    def evaluate(self, encoder: nn.Module, task: Any) -> VtabOutcome:
        """The full outcome (chosen setting, val scores, time) on one task."""
        return run_protocol(encoder, as_vtab_task(task, self.seed), self.settings,
                            self._train_and_score, self._log, copy_encoder=False)

    def run(self, encoder: nn.Module, task: Any) -> dict[str, float]:
        return self.evaluate(encoder, task).metrics()


@vitssl.hookimpl
def register_evaluators(register):
    register("vtab", Vtab)
