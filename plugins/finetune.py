"""``finetune``: full fine-tuning of a copy of the encoder with a new linear head.

The paper's recipe (§3.2, appendix B.1.1): SGD momentum 0.9, no weight decay, cosine decay
after a linear warm-up, clipping at global norm 1, a zero-initialised head, optionally a higher
resolution (position embeddings resampled once, then trained). Options add layer-wise lr decay
and ``optimizer=adamw`` (the PyTorch VTAB-1k convention: lr 1e-3, weight decay 1e-4). The test
split is scored once, after the last step. Reported (percent): ``finetune_top1``, and the mean
training loss of the last steps as ``finetune_train_loss``. Defaults are CPU-sized.

Gradient accumulation: ``accum_steps`` micro-batches per batch, or ``micro_batch`` images per
forward pass at most (either must divide ``batch_size``); a step equals one on the whole batch
up to float rounding.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import vitssl
from vitssl.errors import VitsslError
from vitssl.eval.features import module_device
from vitssl.eval.metrics import top1
from vitssl.eval.progress import progress
from vitssl.models.pos_embed import resample_pos_embed
from vitssl.train.optim import decays
from vitssl.train.schedule import lr_at

# SGD: the top of the paper's fine-tuning grid {0.001, 0.003, 0.01, 0.03}; short runs need it.
OPTIMIZERS = {"sgd": {"lr": 0.03, "weight_decay": 0.0},
              "adamw": {"lr": 1e-3, "weight_decay": 1e-4}}


def set_resolution(encoder: nn.Module, image_size: int) -> None:
    """Resample the position embeddings to the grid of ``image_size`` and make it the default."""
    grid = encoder.grid_for(image_size, image_size)
    if tuple(grid) == tuple(encoder.grid_size):
        return
    pos = resample_pos_embed(encoder.pos_embed.detach(), encoder.grid_size, grid,
                             encoder.num_prefix_tokens)
    encoder.pos_embed = nn.Parameter(pos)
    encoder.grid_size = encoder.patch_embed.grid_size = tuple(grid)
    if hasattr(encoder.patch_embed, "image_size"):
        encoder.patch_embed.image_size = (image_size, image_size)


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and the head."""
    if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def _resized(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < images.shape[-1])


def _batches(dataset: Dataset, batch_size: int, seed: int) -> Iterator:
    generator = torch.Generator().manual_seed(seed)
    drop_last = len(dataset) >= batch_size
    while True:
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=True,
                              drop_last=drop_last, generator=generator, num_workers=0)


def _accum_steps(batch_size: int, accum_steps: int, micro_batch: int | None) -> int:
    """Micro-batches per optimizer step, from ``accum_steps`` or a ``micro_batch`` cap."""
    if micro_batch is None:
        if accum_steps < 1 or batch_size % accum_steps:
            raise VitsslError(f"finetune option 'accum_steps' must be >= 1 and divide "
                              f"'batch_size' ({batch_size}), got {accum_steps}")
        return accum_steps
    if accum_steps != 1:
        raise VitsslError("finetune: give 'accum_steps' or 'micro_batch', not both")
    micro = int(micro_batch)
    if micro < 1 or (micro < batch_size and batch_size % micro):
        raise VitsslError(f"finetune option 'micro_batch' ({micro_batch}) must be >= 1 and "
                          f"divide 'batch_size' ({batch_size}) or be at least as large")
    return max(1, batch_size // micro)


class Finetune:
    """Full fine-tuning: SGD momentum 0.9, cosine, no weight decay, clip 1, zero-init head."""

    def __init__(self, optimizer: str = "sgd", lr: float | None = None,
                 weight_decay: float | None = None, steps: int = 200, batch_size: int = 64,
                 warmup_steps: int | None = None, image_size: int | None = None,
                 layer_decay: float | None = None, grad_clip: float = 1.0, seed: int = 0,
                 accum_steps: int = 1, micro_batch: int | None = None,
                 eval_batch_size: int = 256, progress: bool = True) -> None:
        if optimizer not in OPTIMIZERS:
            raise VitsslError(f"finetune option 'optimizer' must be one of "
                              f"{', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if int(steps) < 1 or int(batch_size) < 1:
            raise VitsslError("finetune options 'steps' and 'batch_size' must be >= 1")
        if layer_decay is not None and not 0 < float(layer_decay) <= 1:
            raise VitsslError(f"finetune option 'layer_decay' must be in (0, 1], "
                              f"got {layer_decay!r}")
        defaults = OPTIMIZERS[optimizer]
        self.optimizer = optimizer
        self.lr = float(defaults["lr"] if lr is None else lr)
        self.weight_decay = float(defaults["weight_decay"] if weight_decay is None
                                  else weight_decay)
        self.steps, self.batch_size = int(steps), int(batch_size)
        self.warmup_steps = (max(1, self.steps // 10) if warmup_steps is None
                             else int(warmup_steps))
        self.image_size = None if image_size is None else int(image_size)
        self.layer_decay = None if layer_decay is None else float(layer_decay)
        self.grad_clip, self.seed = float(grad_clip), int(seed)
        self.eval_batch_size, self.progress = int(eval_batch_size), bool(progress)
        self.accum_steps = _accum_steps(self.batch_size, int(accum_steps), micro_batch)

    def param_groups(self, model: _Classifier) -> list[dict]:
        """One group per (layer, decays?) with its learning-rate scale."""
        depth = len(model.encoder.blocks)
        groups: dict[tuple[int, bool], dict] = {}
        for name, param in model.named_parameters():
            layer = layer_id(name, depth)
            decay = self.weight_decay > 0 and decays(name, param)
            scale = 1.0 if self.layer_decay is None else self.layer_decay ** (depth + 1 - layer)
            group = groups.setdefault((layer, decay), {
                "params": [], "lr_scale": scale,
                "weight_decay": self.weight_decay if decay else 0.0})
            group["params"].append(param)
        return list(groups.values())

    @torch.no_grad()
    def _score(self, model: nn.Module, dataset: Dataset, device: torch.device) -> float:
        model.eval()
        preds, labels = [], []
        loader = DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False)
        for images, y in loader:
            preds.append(model(_resized(images.to(device), self.image_size)).argmax(1).cpu())
            labels.append(torch.as_tensor(y))
        return top1(torch.cat(preds), torch.cat(labels))

    def fit(self, encoder: nn.Module, task: Any) -> tuple[nn.Module, list[float]]:
        """Train a copy of ``encoder`` with a new head on ``task.train``; model and losses."""
        device = module_device(encoder)
        torch.manual_seed(self.seed)
        copied = copy.deepcopy(encoder)
        copied.requires_grad_(True)
        if self.image_size is not None:
            set_resolution(copied, self.image_size)
        model = _Classifier(copied, task.num_classes).to(device).train()
        groups = self.param_groups(model)
        optimizer = (torch.optim.AdamW(groups, lr=self.lr) if self.optimizer == "adamw"
                     else torch.optim.SGD(groups, lr=self.lr, momentum=0.9))
        params = list(model.parameters())
        batches = _batches(task.train, self.batch_size, self.seed)
        losses: list[float] = []
        for step in progress(range(self.steps), self.steps, f"finetune {task.name}",
                             self.progress):
            lr = lr_at(step, base_lr=self.lr, total_steps=self.steps,
                       warmup_steps=self.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            images, labels = next(batches)
            optimizer.zero_grad(set_to_none=True)
            loss = self._accumulate(model, images, torch.as_tensor(labels), device)
            if not math.isfinite(loss):
                raise VitsslError(f"finetune diverged at step {step} (loss {loss}); "
                                  f"lower 'lr' (now {self.lr:g})")
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            optimizer.step()
            losses.append(loss)
        return model, losses

    def _accumulate(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    device: torch.device) -> float:
        """Backward over micro-batches, each loss weighted by its share; the batch's mean loss."""
        total = len(labels)
        size = max(1, self.batch_size // self.accum_steps)  # a short last batch: fewer chunks
        loss_sum = torch.zeros((), device=device)
        for chunk, chunk_labels in zip(images.split(size), labels.split(size), strict=True):
            logits = model(_resized(chunk.to(device), self.image_size))
            loss = F.cross_entropy(logits, chunk_labels.to(device)) * (len(chunk_labels) / total)
            loss.backward()
            loss_sum += loss.detach()
        return loss_sum.item()

    def run(self, encoder: nn.Module, task: Any) -> dict[str, float]:
        model, losses = self.fit(encoder, task)
        tail = losses[-max(1, min(20, len(losses) // 5)):]
        return {"finetune_top1": self._score(model, task.test, module_device(encoder)),
                "finetune_train_loss": sum(tail) / len(tail)}


@vitssl.hookimpl
def register_evaluators(register):
    register("finetune", Finetune)
