"""``dino``: self-distillation with no labels (Caron et al. 2021, facebookresearch/dino).

A student (the encoder and a projection head, :class:`DinoHead`) learns to
match an EMA teacher of itself across views: each of the two global crops
goes through the teacher, every crop (global and local) through the student,
and the loss is the cross-entropy between the teacher's centred, sharpened
distribution of one global view and the student's log-softmax of every other
view (:func:`cross_view_loss`). The teacher is the exported encoder.

``recipe=`` sets the defaults of every option left unset: ``"paper"`` (``PAPER``,
``configs/dino-s16.yaml``), which collapses to a uniform teacher on short runs of
small models, or ``"auto"`` (default, ``SHORT_RUN`` in :mod:`vitssl.ssl.self_distillation`;
benchmarks/RESULTS.md, "DINO on short runs"): a teacher whose total update mass
Σ(1 − m) is ``update_mass`` whatever the run's length, Sinkhorn–Knopp, head BatchNorm,
KoLeo, global crops of 60-100 %, colour operations where the data declares them.

Schedules are pure functions of ``step / total_steps`` (temperature warm-up,
momentum, the last layer frozen for the first ``freeze_last_layer``).
``centering="ema"`` moves a centre (momentum ``center_momentum``, all-reduced
over ranks and micro-batches once per step) towards the teacher's batch mean,
from zero or the first batch mean (``center_init``); ``"sinkhorn-knopp"``
(DINOv2) balances the teacher's assignment over the batch instead.
``koleo_weight`` adds DINOv2's KoLeo term on the student's pooled features of
the first global view. Head sizes scale with width: the paper's (2048, 256,
65,536 prototypes) from width 384, else 512, 128 and the recipe's
``small_out_dim``. The teacher, schedules, centring and views are
:class:`vitssl.ssl.self_distillation.SelfDistillation`'s, shared with ``ibot``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import vitssl
from vitssl.ssl.batch import progress
from vitssl.ssl.distillation import cross_view_loss
from vitssl.ssl.self_distillation import SHORT_RUN, SelfDistillation, teacher_metrics

PAPER: dict[str, Any] = dict(
    small_out_dim=1024, norm_last_layer=True, use_bn=False, teacher_temp=0.07,
    warmup_teacher_temp=0.04, teacher_temp_warmup=0.3, momentum=0.996, update_mass=2.0,
    centering="ema", center_init="zeros", koleo_weight=0.0, num_local=4, color=True,
    global_scale=(0.4, 1.0))


class Dino(SelfDistillation):
    """DINO around an encoder; ``forward(batch)`` reads ``batch["views"]``."""

    name = "dino"
    recipes = {"paper": PAPER, "auto": SHORT_RUN}

    def __init__(self, encoder: nn.Module, recipe: str = "auto", out_dim: int | None = None,
                 hidden_dim: int | None = None, bottleneck_dim: int | None = None,
                 norm_last_layer: bool | None = None, student_temp: float = 0.1,
                 teacher_temp: float | None = None, warmup_teacher_temp: float | None = None,
                 teacher_temp_warmup: float | None = None, momentum: float | None = None,
                 update_mass: float | None = None, center_momentum: float = 0.9,
                 freeze_last_layer: float = 0.01, num_local: int | None = None,
                 local_size: int | None = None, global_scale: tuple[float, float] | None = None,
                 local_scale: tuple[float, float] = (0.05, 0.4), color: bool | None = None,
                 hflip: bool | None = None, use_bn: bool | None = None,
                 center_init: str | None = None, centering: str | None = None,
                 sinkhorn_iterations: int = 3, koleo_weight: float | None = None) -> None:
        super().__init__(encoder, self.resolve(locals()))

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        globals_, local = self.crops(batch)
        step, total = progress(batch)
        b, g = globals_.shape[:2]
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_encoder(globals_.flatten(0, 1)))
            teacher = teacher.float().view(b, g, -1)
        features = self.encoder(globals_.flatten(0, 1))  # (B G, D), b-major
        student = [self.head(features).view(b, g, -1), *self.local_logits(local)]
        student_out = torch.cat(student, dim=1).float()
        temp = self.teacher_temperature(step, total)
        targets = self.targets(teacher.flatten(0, 1), "center", temp)
        loss = cross_view_loss(student_out, targets.view(b, g, -1), self.student_temp)
        out = {"loss_dino": loss.detach(), **teacher_metrics(targets), "teacher_temp": temp}
        loss = self.with_koleo(loss, out, features.view(b, g, -1)[:, 0])
        return {"loss": loss, **out}


@vitssl.hookimpl
def register_objectives(register):
    register("dino", Dino)
