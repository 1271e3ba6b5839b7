"""``dino``: self-distillation with no labels (Caron et al. 2021, facebookresearch/dino).

A student (the encoder and a projection head) learns to match an EMA teacher
of itself across views: each of the two global crops goes through the
teacher, every crop (global and local) through the student, and the loss is
the cross-entropy between the teacher's centred, sharpened softmax of one
global view and the student's log-softmax of every other view::

    loss = mean over pairs (i global, v != i) of
           -sum_k softmax((t_i - c) / tau_t)_k * log_softmax(s_v / tau_s)_k

Schedules are pure functions of training progress (``step / total_steps``):
the teacher temperature warms up linearly from ``warmup_teacher_temp`` to
``teacher_temp`` over the first ``teacher_temp_warmup`` of the run; the
teacher momentum follows a cosine from ``momentum`` to 1; the head's last
layer is frozen (its gradient dropped) during the first ``freeze_last_layer``
of the run. The centre ``c`` moves with momentum ``center_momentum`` towards
the batch mean of the teacher outputs, all-reduced over ranks and micro-batches,
once per optimiser step; it starts at zero as in the paper, or with
``center_init="first-batch"`` at the first step's batch mean (at zero, the
first steps' targets share the teacher's common mode, and a short run's
student learns to ignore its input before the centre catches up). The
teacher is the encoder that is exported and evaluated
(:meth:`Dino.exports`).

Head (``DinoHead``): 3-layer MLP (GELU) to a ``bottleneck`` vector,
L2-normalised, then a weight-normalised linear layer to ``out_dim``
prototypes (its norm fixed at 1 with ``norm_last_layer``). Defaults follow the
paper (hidden 2048, bottleneck 256, 65,536 prototypes) for encoders of width
>= 384, and are scaled down for narrower ones (hidden 512, bottleneck 128,
1,024 prototypes) so that small models train on a laptop.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import vitssl
from vitssl.data.views import MultiCrop
from vitssl.errors import VitsslError


class DinoHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int,
                 norm_last_layer: bool = True, use_bn: bool = False) -> None:
        super().__init__()
        norm = (lambda: nn.BatchNorm1d(hidden_dim)) if use_bn else nn.Identity
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), norm(), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), norm(), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def teacher_momentum(base: float, step: int, total_steps: int) -> float:
    """Cosine from ``base`` at step 0 to 1 at the last step."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1.0) / 2.0


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """student (B, V, K) logits of all views, teacher (B, G, K) of the global views."""
    targets = F.softmax((teacher - center) / teacher_temp, dim=-1)
    log_probs = F.log_softmax(student / student_temp, dim=-1)
    total, pairs = student.new_zeros(()), 0
    for i in range(teacher.shape[1]):
        for v in range(student.shape[1]):
            if v == i:
                continue
            total = total + (-targets[:, i] * log_probs[:, v]).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


class Dino(vitssl.Objective):
    """DINO around an encoder; ``forward(batch)`` reads ``batch["views"]``."""


    def __init__(self, encoder: nn.Module, out_dim: int | None = None,
                 hidden_dim: int | None = None, bottleneck_dim: int | None = None,
                 norm_last_layer: bool = True, student_temp: float = 0.1,
                 teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 teacher_temp_warmup: float = 0.3, momentum: float = 0.996,
                 center_momentum: float = 0.9, freeze_last_layer: float = 0.01,
                 num_local: int = 4, local_size: int | None = None,
                 global_scale: tuple[float, float] = (0.4, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.4),
                 color: bool = True, hflip: bool | None = None, use_bn: bool = False,
                 center_init: str = "zeros") -> None:
        super().__init__()
        small = encoder.embed_dim < 384
        out_dim = int(out_dim or (1024 if small else 65536))
        hidden_dim = int(hidden_dim or (512 if small else 2048))
        bottleneck_dim = int(bottleneck_dim or (128 if small else 256))
        if min(out_dim, hidden_dim, bottleneck_dim) < 1:
            raise VitsslError("dino: out_dim, hidden_dim and bottleneck_dim must be >= 1")
        for name, value in (("student_temp", student_temp), ("teacher_temp", teacher_temp),
                            ("warmup_teacher_temp", warmup_teacher_temp)):
            if value <= 0:
                raise VitsslError(f"dino: {name} must be > 0, got {value}")
        for name, value in (("momentum", momentum), ("center_momentum", center_momentum),
                            ("teacher_temp_warmup", teacher_temp_warmup),
                            ("freeze_last_layer", freeze_last_layer)):
            if not 0.0 <= value <= 1.0:
                raise VitsslError(f"dino: {name} must lie in [0, 1], got {value}")
        if center_init not in ("zeros", "first-batch"):
            raise VitsslError(f"dino: center_init must be zeros or first-batch, got "
                              f"{center_init!r}")
        self.encoder = encoder
        self.head = DinoHead(encoder.embed_dim, out_dim, hidden_dim, bottleneck_dim,
                             norm_last_layer, use_bn)
        self.teacher_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        # 1 once the centre holds a batch mean; "first-batch" starts it at the first one.
        self.register_buffer("center_ready", torch.tensor(float(center_init == "zeros")))
        self.student_temp, self.teacher_temp = float(student_temp), float(teacher_temp)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.teacher_temp_warmup = float(teacher_temp_warmup)
        self.momentum, self.center_momentum = float(momentum), float(center_momentum)
        self.freeze_last_layer = float(freeze_last_layer)
        self.crop = dict(num_local=int(num_local), local_size=local_size,
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
        image_size = height
        patch = self.encoder.patch_size if isinstance(self.encoder.patch_size, int) else 1
        local = self.crop["local_size"] or max(patch, round(image_size * 3 / 7 / patch) * patch)
        hflip = self.crop["hflip"]
        if hflip is None:
            hflip = bool(getattr(data, "hflip", True))
        return MultiCrop(image_size, int(local), self.crop["num_local"],
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

    # -- the objective -----------------------------------------------------------------------
    def _student(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, S, S) -> (B, V, K)."""
        b, v = images.shape[:2]
        return self.head(self.encoder(images.flatten(0, 1))).view(b, v, -1)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        views = batch.get("views")
        if not views or "global" not in views:
            raise VitsslError("dino needs the multi-crop views in the batch (batch['views']"
                              "['global']); run it through vitssl pretrain")
        step, total = int(batch.get("step", 0)), int(batch.get("total_steps", 1))
        globals_ = views["global"]
        with torch.no_grad():
            b, g = globals_.shape[:2]
            teacher = self.teacher_head(self.teacher_encoder(globals_.flatten(0, 1)))
            teacher = teacher.float().view(b, g, -1)
        student = [self._student(globals_)]
        if "local" in views:
            student.append(self._student(views["local"]))
        student_out = torch.cat(student, dim=1).float()
        temp = self.teacher_temperature(step, total)
        loss = dino_loss(student_out, teacher, self.center, self.student_temp, temp)
        with torch.no_grad():
            flat = teacher.flatten(0, 1)
            batch_sum = flat.sum(dim=0, keepdim=True)
            self._center_sum = batch_sum if self._center_sum is None else \
                self._center_sum + batch_sum
            self._center_count += flat.shape[0]
            probs = F.softmax((flat - self.center) / temp, dim=-1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
            mean = probs.mean(0)
            kl_uniform = (mean * (mean.clamp_min(1e-12) * mean.numel()).log()).sum()
        return {"loss": loss, "teacher_entropy": entropy, "teacher_kl_uniform": kl_uniform,
                "teacher_temp": temp}

    # -- step hooks --------------------------------------------------------------------------
    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        """Drop the last layer's gradient while it is frozen."""
        if step < self.freeze_last_layer * total_steps:
            for param in self.head.last_layer.parameters():
                param.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update of the teacher; centre update from this step's teacher outputs."""
        m = teacher_momentum(self.momentum, step, total_steps)
        student = list(self.encoder.parameters()) + list(self.head.parameters())
        teacher = list(self.teacher_encoder.parameters()) + list(self.teacher_head.parameters())
        for t, s in zip(teacher, student, strict=True):
            t.lerp_(s.detach(), 1.0 - m)
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
