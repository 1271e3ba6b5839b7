"""``dino``: self-distillation with no labels (Caron et al. 2021, facebookresearch/dino).

A student (the encoder and a projection head, :class:`DinoHead`) learns to
match an EMA teacher of itself across views: each of the two global crops
goes through the teacher, every crop (global and local) through the student,
and the loss is the cross-entropy between the teacher's centred, sharpened
distribution of one global view and the student's log-softmax of every other
view (:func:`cross_view_loss`). The teacher is the exported encoder.

``recipe=`` sets the defaults of every option left unset: ``"paper"``
(``PAPER``: teacher temperature 0.04 -> 0.07 over 30% of the run, cosine
momentum 0.996 -> 1, EMA centre from zero, last-layer norm fixed, no KoLeo;
``configs/dino-s16.yaml``), which collapses to a uniform teacher on short runs
of small models, or ``"auto"`` (default, ``AUTO``), measured on the default
run (benchmarks/RESULTS.md, "DINO on short runs"): its base momentum gives the
teacher a total update mass Σ(1 − m) of ``update_mass`` whatever the run's
length (:func:`run_scaled_momentum`; long runs reach the paper's 0.996).

Schedules are pure functions of ``step / total_steps`` (temperature warm-up,
momentum, the last layer frozen for the first ``freeze_last_layer``).
``centering="ema"`` moves a centre (momentum ``center_momentum``, all-reduced
over ranks and micro-batches once per step) towards the teacher's batch mean,
from zero or the first batch mean (``center_init``); ``"sinkhorn-knopp"``
(DINOv2) balances the teacher's assignment over the batch instead.
``koleo_weight`` adds DINOv2's KoLeo term on the student's pooled features of
the first global view. Head sizes scale with width: the paper's (2048, 256,
65,536 prototypes) from width 384, else 512, 128 and the recipe's
``small_out_dim``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import vitssl
from vitssl.data.views import MultiCrop
from vitssl.errors import VitsslError
from vitssl.ssl.centering import sinkhorn_knopp
from vitssl.ssl.distillation import DinoHead, cross_view_loss, dino_loss
from vitssl.ssl.ema import cosine_momentum, ema_update, run_scaled_momentum
from vitssl.ssl.koleo import koleo_loss

__all__ = ["AUTO", "PAPER", "Dino", "DinoHead", "dino_loss", "teacher_momentum"]

teacher_momentum = cosine_momentum  # the name this module's schedule had

PAPER: dict[str, Any] = dict(
    small_out_dim=1024, norm_last_layer=True, use_bn=False, teacher_temp=0.07,
    warmup_teacher_temp=0.04, teacher_temp_warmup=0.3, momentum=0.996, update_mass=2.0,
    centering="ema", center_init="zeros", koleo_weight=0.0, num_local=4)
AUTO: dict[str, Any] = dict(
    small_out_dim=1024, norm_last_layer=False, use_bn=True, teacher_temp=0.02,
    warmup_teacher_temp=0.02, teacher_temp_warmup=0.0, momentum=None, update_mass=2.0,
    centering="sinkhorn-knopp", center_init="first-batch", koleo_weight=0.1, num_local=0)
RECIPES = {"paper": PAPER, "auto": AUTO}
CENTERINGS = ("ema", "sinkhorn-knopp")


class Dino(vitssl.Objective):
    """DINO around an encoder; ``forward(batch)`` reads ``batch["views"]``."""

    def __init__(self, encoder: nn.Module, recipe: str = "auto", out_dim: int | None = None,
                 hidden_dim: int | None = None, bottleneck_dim: int | None = None,
                 norm_last_layer: bool | None = None, student_temp: float = 0.1,
                 teacher_temp: float | None = None, warmup_teacher_temp: float | None = None,
                 teacher_temp_warmup: float | None = None, momentum: float | None = None,
                 update_mass: float | None = None, center_momentum: float = 0.9,
                 freeze_last_layer: float = 0.01, num_local: int | None = None,
                 local_size: int | None = None,
                 global_scale: tuple[float, float] = (0.4, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.4),
                 color: bool = True, hflip: bool | None = None, use_bn: bool | None = None,
                 center_init: str | None = None, centering: str | None = None,
                 sinkhorn_iterations: int = 3, koleo_weight: float | None = None) -> None:
        super().__init__()
        if recipe not in RECIPES:
            raise VitsslError(f"dino: recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
        given = dict(norm_last_layer=norm_last_layer, use_bn=use_bn, teacher_temp=teacher_temp,
                     warmup_teacher_temp=warmup_teacher_temp, momentum=momentum,
                     teacher_temp_warmup=teacher_temp_warmup, centering=centering,
                     center_init=center_init, koleo_weight=koleo_weight,
                     update_mass=update_mass, num_local=num_local)
        o = {**RECIPES[recipe], **{k: v for k, v in given.items() if v is not None}}
        small = encoder.embed_dim < 384
        out_dim = int(out_dim or (o["small_out_dim"] if small else 65536))
        hidden_dim = int(hidden_dim or (512 if small else 2048))
        bottleneck_dim = int(bottleneck_dim or (128 if small else 256))
        if min(out_dim, hidden_dim, bottleneck_dim) < 1:
            raise VitsslError("dino: out_dim, hidden_dim and bottleneck_dim must be >= 1")
        positive = dict(student_temp=student_temp, teacher_temp=o["teacher_temp"],
                        warmup_teacher_temp=o["warmup_teacher_temp"], update_mass=o["update_mass"])
        unit = dict(momentum=o["momentum"], center_momentum=center_momentum,
                    teacher_temp_warmup=o["teacher_temp_warmup"],
                    freeze_last_layer=freeze_last_layer)
        for name, value in positive.items():
            if value <= 0:
                raise VitsslError(f"dino: {name} must be > 0, got {value}")
        for name, value in unit.items():
            if value is not None and not 0.0 <= value <= 1.0:
                raise VitsslError(f"dino: {name} must lie in [0, 1], got {value}")
        if o["center_init"] not in ("zeros", "first-batch"):
            raise VitsslError(f"dino: center_init must be zeros or first-batch, got "
                              f"{o['center_init']!r}")
        if o["centering"] not in CENTERINGS:
            raise VitsslError(f"dino: centering must be one of {', '.join(CENTERINGS)}, got "
                              f"{o['centering']!r}")
        if int(sinkhorn_iterations) < 1 or o["koleo_weight"] < 0:
            raise VitsslError("dino: sinkhorn_iterations must be >= 1 and koleo_weight >= 0")
        self.encoder = encoder
        self.head = DinoHead(encoder.embed_dim, out_dim, hidden_dim, bottleneck_dim,
                             bool(o["norm_last_layer"]), bool(o["use_bn"]))
        self.teacher_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        # 1 once the centre holds a batch mean; "first-batch" starts it at the first one.
        self.register_buffer("center_ready", torch.tensor(float(o["center_init"] == "zeros")))
        self.recipe, self.centering = recipe, o["centering"]
        self.student_temp, self.teacher_temp = float(student_temp), float(o["teacher_temp"])
        self.warmup_teacher_temp = float(o["warmup_teacher_temp"])
        self.teacher_temp_warmup = float(o["teacher_temp_warmup"])
        self.momentum = None if o["momentum"] is None else float(o["momentum"])
        self.update_mass, self.center_momentum = float(o["update_mass"]), float(center_momentum)
        self.freeze_last_layer = float(freeze_last_layer)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.koleo_weight = float(o["koleo_weight"])
        self.crop = dict(num_local=int(o["num_local"]), local_size=local_size,
                         global_scale=tuple(global_scale), local_scale=tuple(local_scale),
                         color=bool(color), hflip=hflip)
        # Teacher outputs summed since the last optimiser step (per rank, not state).
        self._center_sum: torch.Tensor | None = None
        self._center_count = 0

    def exports(self) -> dict[str, str]:
        """The teacher is the encoder DINO evaluates."""
        return {"encoder": "teacher_encoder"}

    # -- data --------------------------------------------------------------------------------
    def views(self, size: tuple[int, int], data: Any = None) -> MultiCrop:
        """Two global crops at the model's (square) size and ``num_local`` local crops.

        Local crops default to 3/7 of the global size (DINO's 96 / 224), rounded
        to whole patches; ``hflip`` defaults to what the data allows.
        """
        height, width = size
        if height != width:
            raise VitsslError(f"dino makes square crops, not the non-square model.image_size "
                              f"[{height}, {width}]; use a square size")
        patch = self.encoder.patch_size if isinstance(self.encoder.patch_size, int) else 1
        local = self.crop["local_size"] or max(patch, round(height * 3 / 7 / patch) * patch)
        hflip = self.crop["hflip"]
        if hflip is None:
            hflip = bool(getattr(data, "hflip", True))
        return MultiCrop(height, int(local), self.crop["num_local"],
                         global_scale=self.crop["global_scale"],
                         local_scale=self.crop["local_scale"], hflip=hflip,
                         color=self.crop["color"])

    # -- schedules ---------------------------------------------------------------------------
    def teacher_temperature(self, step: int, total_steps: int) -> float:
        warm = self.teacher_temp_warmup * total_steps
        if step >= warm:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * (
            step / warm)

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        """Cosine to 1 from ``momentum``, or from the run-scaled base when it is unset."""
        base = self.momentum
        if base is None:
            base = run_scaled_momentum(total_steps, self.update_mass)
        return cosine_momentum(base, step, total_steps)

    # -- the objective -----------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        views = batch.get("views")
        if not views or "global" not in views:
            raise VitsslError("dino needs the multi-crop views in the batch (batch['views']"
                              "['global']); run it through vitssl pretrain")
        step, total = int(batch.get("step", 0)), int(batch.get("total_steps", 1))
        globals_ = views["global"]
        b, g = globals_.shape[:2]
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_encoder(globals_.flatten(0, 1)))
            teacher = teacher.float().view(b, g, -1)
        features = self.encoder(globals_.flatten(0, 1))  # (B G, D), b-major
        student = [self.head(features).view(b, g, -1)]
        if "local" in views:
            local = views["local"]
            student.append(self.head(self.encoder(local.flatten(0, 1))).view(*local.shape[:2], -1))
        student_out = torch.cat(student, dim=1).float()
        temp = self.teacher_temperature(step, total)
        with torch.no_grad():
            flat = teacher.flatten(0, 1)
            if self.centering == "sinkhorn-knopp":
                targets = sinkhorn_knopp(flat, temp, self.sinkhorn_iterations)
            else:
                targets = F.softmax((flat - self.center) / temp, dim=-1)
                batch_sum = flat.sum(dim=0, keepdim=True)
                self._center_sum = batch_sum if self._center_sum is None else \
                    self._center_sum + batch_sum
                self._center_count += flat.shape[0]
            entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1).mean()
            mean = targets.mean(0)
            kl_uniform = (mean * (mean.clamp_min(1e-12) * mean.numel()).log()).sum()
        loss = cross_view_loss(student_out, targets.view(b, g, -1), self.student_temp)
        out = {"teacher_entropy": entropy, "teacher_kl_uniform": kl_uniform,
               "teacher_temp": temp}
        if self.koleo_weight > 0:
            koleo = koleo_loss(features.view(b, g, -1)[:, 0])
            loss = loss + self.koleo_weight * koleo
            out["koleo"] = koleo.detach()
        return {"loss": loss, **out}

    # -- step hooks --------------------------------------------------------------------------
    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        """Drop the last layer's gradient while it is frozen."""
        if step < self.freeze_last_layer * total_steps:
            for param in self.head.last_layer.parameters():
                param.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update of the teacher; centre update from this step's teacher outputs."""
        ema_update(list(self.teacher_encoder.parameters()) +
                   list(self.teacher_head.parameters()),
                   list(self.encoder.parameters()) + list(self.head.parameters()),
                   self.teacher_momentum(step, total_steps))
        if self._center_sum is None:
            return
        stats = torch.cat([self._center_sum.flatten(),
                           self._center_sum.new_tensor([self._center_count])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        batch_center = (stats[:-1] / stats[-1]).view_as(self.center)
        momentum = self.center_momentum * self.center_ready  # 0 on a first-batch start
        self.center.mul_(momentum).add_(batch_center * (1.0 - momentum))
        self.center_ready.fill_(1.0)
        self._center_sum, self._center_count = None, 0


@vitssl.hookimpl
def register_objectives(register):
    register("dino", Dino)
