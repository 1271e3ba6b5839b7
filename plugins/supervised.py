"""``supervised``: the paper's supervised pre-training head and loss.

The encoder's pooled representation (class token or mean, per model config)
goes through a "pre-logits" MLP with one tanh hidden layer of width D
(``pre_logits=False`` drops it) and a linear classifier. Loss: softmax
cross-entropy with optional label smoothing, or (``loss="sigmoid"``) the
multi-label sigmoid cross-entropy summed over classes. Labels are class
indices (B,), or multi-hot targets (B, num_classes) for multi-label data.
Metrics: ``top1`` accuracy, and ``top5`` when there are more than 5 classes
(for multi-hot targets: whether the top-k predictions hit a positive class).

Options: ``num_classes`` (required), ``pre_logits`` (default true), ``loss``
(``softmax`` | ``sigmoid``), ``label_smoothing`` (default 0), ``head_bias_init``
(the classifier starts with zero weights and this bias; e.g. -10 for sigmoid).

At transfer the whole head is dropped; evaluators put a zero-initialised
linear layer on the encoder, as the paper does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import vitssl
from vitssl.errors import VitsslError

LOSSES = ("softmax", "sigmoid")


class Supervised(vitssl.Objective):
    """Classification around an encoder; ``forward(batch)`` -> loss and accuracy metrics."""

    requires_labels = True

    @classmethod
    def options_from_data(cls, data: vitssl.DataInfo) -> dict:
        """The class count of the pretraining data."""
        return {"num_classes": data.num_classes}

    def exports(self) -> dict[str, str]:
        """The encoder, and the pre-logits layer (``features=pre-logits``)."""
        out = {"encoder": "encoder"}
        if isinstance(self.pre_logits, nn.Sequential):
            out["pre_logits"] = "pre_logits"
        return out

    def __init__(self, encoder: nn.Module, num_classes: int | None = None,
                 pre_logits: bool = True, loss: str = "softmax",
                 label_smoothing: float = 0.0, head_bias_init: float = 0.0) -> None:
        super().__init__()
        if num_classes is None:
            raise VitsslError("the supervised objective needs the number of classes; set "
                              "objective.options.num_classes=N (or use data that reports it)")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise VitsslError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if loss not in LOSSES:
            raise VitsslError(f"unknown supervised loss '{loss}'; accepted: {', '.join(LOSSES)}")
        if not 0.0 <= label_smoothing < 1.0:
            raise VitsslError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.loss_type = loss
        self.label_smoothing = float(label_smoothing)
        dim = encoder.embed_dim
        self.pre_logits = (nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) if pre_logits
                           else nn.Identity())
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, head_bias_init)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> class logits (B, num_classes)."""
        return self.head(self.pre_logits(self.encoder(images)))

    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Labels are class indices in range (B,) or multi-hot rows (B, num_classes)."""
        labels = batch.get("label")
        if labels is None:
            raise VitsslError("the supervised objective needs labelled data; the batch has no "
                              "'label'")
        if labels.ndim == 1:
            if labels.numel() and (int(labels.min()) < 0 or
                                   int(labels.max()) >= self.num_classes):
                raise VitsslError(f"labels must lie in [0, {self.num_classes}); got values from "
                                  f"{int(labels.min())} to {int(labels.max())} - check "
                                  f"objective.options.num_classes")
        elif labels.ndim != 2 or labels.shape[1] != self.num_classes:
            raise VitsslError(f"labels must be class indices (B,) or multi-hot (B, "
                              f"{self.num_classes}); got shape {tuple(labels.shape)}")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + \
                self.label_smoothing / self.num_classes
        logits = logits.float()
        if self.loss_type == "sigmoid":
            per_class = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            return per_class.sum(dim=1).mean()
        return F.cross_entropy(logits, targets)  # soft targets: -sum(t * log_softmax)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        labels = batch["label"]  # class indices (B,) or multi-hot rows (B, C)
        targets = F.one_hot(labels, self.num_classes) if labels.ndim == 1 else labels
        targets = targets.float()
        logits = self.logits(batch["image"])
        loss = self.loss(logits, targets)
        out: dict[str, torch.Tensor | float] = {"loss": loss, "loss_ce": loss.detach()}
        with torch.no_grad():
            for k in (1, 5):
                if k == 1 or self.num_classes > 5:
                    top = logits.topk(k, dim=1).indices
                    hit = targets.gather(1, top).amax(dim=1) > 0
                    out[f"top{k}"] = hit.float().mean()
        return out


@vitssl.hookimpl
def register_objectives(register):
    register("supervised", Supervised)
