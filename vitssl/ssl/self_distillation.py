"""What the self-distillation objectives share (``dino``, ``ibot``): options, teacher, centring.

:class:`SelfDistillation` is the base of an objective whose student (``encoder``
and a :class:`~vitssl.ssl.distillation.DinoHead` ``head``) learns from an EMA
teacher of itself (``teacher_encoder``, ``teacher_head``; the exported encoder).
It holds the options (a recipe's defaults under those the user set, checked in one
place), the head sized by width, schedules as pure functions of ``step /
total_steps`` (teacher temperature warm-up, momentum, last layers frozen at the
start), centring of the teacher's logits (:meth:`SelfDistillation.targets`: an
``"ema"`` centre buffer ``NAME`` with its flag ``NAME_ready``, moved once per
optimiser step by the mean over micro-batches and ranks, from zero or the first
mean; or ``"sinkhorn-knopp"``), DINO's multi-crop views and the EMA update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import vitssl
from vitssl.errors import VitsslError
from vitssl.ssl.batch import square_side, views
from vitssl.ssl.centering import sinkhorn_knopp
from vitssl.ssl.distillation import DinoHead
from vitssl.ssl.distributed import all_reduce_
from vitssl.ssl.ema import ema_update, teacher_copy, teacher_momentum
from vitssl.ssl.heads import freeze_last_norm_bias
from vitssl.ssl.koleo import koleo_loss
from vitssl.ssl.views import MultiCrop, data_allows

CENTERINGS = ("ema", "sinkhorn-knopp")
POSITIVE = ("student_temp", "teacher_temp", "warmup_teacher_temp", "teacher_patch_temp",
            "warmup_teacher_patch_temp", "update_mass")
UNIT = ("momentum", "center_momentum", "teacher_temp_warmup", "freeze_last_layer")
PAPER_MOMENTUM = 0.996  # DINO's and iBOT's base momentum: the cap of the run-scaled one
SHORT_RUN: dict[str, Any] = dict(
    small_out_dim=1024, norm_last_layer=False, use_bn=True, teacher_temp=0.02,
    warmup_teacher_temp=0.02, teacher_temp_warmup=0.0, momentum=None, update_mass=80.0,
    centering="sinkhorn-knopp", center_init="first-batch", koleo_weight=0.1, num_local=0,
    color=None, global_scale=(0.6, 1.0))
"""The choices measured on short runs of small models (dino's and ibot's ``recipe=auto``)."""


def teacher_stats(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean entropy of the target rows (n, K), and the KL of their mean from uniform."""
    entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1).mean()
    mean = targets.mean(0)
    return entropy, (mean * (mean.clamp_min(1e-12) * mean.numel()).log()).sum()


def teacher_metrics(targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The teacher's entropy, its ratio to ln K (1: uniform targets, which the run monitor
    warns about) and the KL of its mean from uniform, for targets (n, K)."""
    entropy, kl_uniform = teacher_stats(targets)
    return {"teacher_entropy": entropy, "teacher_kl_uniform": kl_uniform,
            "teacher_entropy_ratio": entropy / math.log(targets.shape[-1])}


def warmup(start: float, end: float, fraction: float, step: int, total_steps: int) -> float:
    """``start`` -> ``end`` linearly over the first ``fraction`` of the run, then ``end``."""
    warm = fraction * total_steps
    if step >= warm:
        return end
    return start + (end - start) * (step / warm)


class SelfDistillation(vitssl.Objective):
    """Student, EMA teacher, schedules and centring; subclasses write ``forward``."""

    name = "self-distillation"  # the objective's name in messages
    recipes: Mapping[str, Mapping[str, Any]] = {}  # recipe -> defaults of the unset options
    large_out_dim = 65536  # prototypes from width 384 (narrower: the recipe's small_out_dim)

    @classmethod
    def resolve(cls, scope: Mapping[str, Any]) -> dict[str, Any]:
        """A constructor's ``locals()`` over its recipe's defaults (None: unset), checked."""
        name, recipe = cls.name, scope["recipe"]
        if recipe not in cls.recipes:
            raise VitsslError(f"{name}: recipe must be one of {sorted(cls.recipes)}, got "
                              f"{recipe!r}")
        o = {**cls.recipes[recipe], **{k: v for k, v in scope.items() if v is not None and
                                       k not in ("self", "encoder", "__class__")}}
        for key in POSITIVE:
            if key in o and o[key] <= 0:
                raise VitsslError(f"{name}: {key} must be > 0, got {o[key]}")
        for key in UNIT:
            if o.get(key) is not None and not 0.0 <= o[key] <= 1.0:
                raise VitsslError(f"{name}: {key} must lie in [0, 1], got {o[key]}")
        if o["center_init"] not in ("zeros", "first-batch"):
            raise VitsslError(f"{name}: center_init must be zeros or first-batch, got "
                              f"{o['center_init']!r}")
        if o["centering"] not in CENTERINGS:
            raise VitsslError(f"{name}: centering must be one of {', '.join(CENTERINGS)}, got "
                              f"{o['centering']!r}")
        if int(o["sinkhorn_iterations"]) < 1 or o["koleo_weight"] < 0:
            raise VitsslError(f"{name}: sinkhorn_iterations must be >= 1 and koleo_weight >= 0")
        return o

    def __init__(self, encoder: nn.Module, o: Mapping[str, Any]) -> None:
        """``o``: the resolved options; unset head sizes (out, hidden, bottleneck) are the
        paper's (``large_out_dim``, 2048, 256) from width 384, else (``small_out_dim``,
        512, 128)."""
        small = encoder.embed_dim < 384
        defaults = (o["small_out_dim"], 512, 128) if small else (self.large_out_dim, 2048, 256)
        dims = [int(o.get(key) or default) for key, default in
                zip(("out_dim", "hidden_dim", "bottleneck_dim"), defaults, strict=True)]
        if min(dims) < 1:
            raise VitsslError(f"{self.name}: out_dim, hidden_dim and bottleneck_dim must be >= 1")
        head = DinoHead(encoder.embed_dim, *dims, bool(o["norm_last_layer"]), bool(o["use_bn"]))
        super().__init__()
        if o["use_bn"] and float(o["koleo_weight"]) <= 0:
            freeze_last_norm_bias(encoder)  # the head's first BatchNorm removes it
        self.encoder = encoder
        self.head = head
        # The teacher runs without dropout or drop-path, as DINO's and iBOT's are built.
        self.teacher_encoder = teacher_copy(encoder)
        self.teacher_head = teacher_copy(head)
        self.center_init = o["center_init"]
        self.add_centre("center", dims[0])
        self.recipe, self.centering = o["recipe"], o["centering"]
        self.student_temp, self.teacher_temp = float(o["student_temp"]), float(o["teacher_temp"])
        self.warmup_teacher_temp = float(o["warmup_teacher_temp"])
        self.teacher_temp_warmup = float(o["teacher_temp_warmup"])
        self.momentum = None if o["momentum"] is None else float(o["momentum"])
        self.update_mass = float(o["update_mass"])
        self.center_momentum = float(o["center_momentum"])
        self.freeze_last_layer = float(o["freeze_last_layer"])
        self.sinkhorn_iterations = int(o["sinkhorn_iterations"])
        self.koleo_weight = float(o["koleo_weight"])
        self.crop = dict(num_local=int(o["num_local"]), local_size=o.get("local_size"),
                         global_scale=tuple(o["global_scale"]),
                         local_scale=tuple(o["local_scale"]), color=o["color"],
                         hflip=o.get("hflip"))
        # (teacher, student) submodules the EMA moves; the layers frozen at the start.
        self.ema_pairs = [("teacher_encoder", "encoder"), ("teacher_head", "head")]
        self.last_layers = ["head.last_layer"]
        # Teacher logits summed per centre since the last optimiser step (per rank, not state).
        self._centre_sums: dict[str, list[Any]] = {}

    def exports(self) -> dict[str, str]:
        """The teacher is the encoder these methods evaluate."""
        return {"encoder": "teacher_encoder"}

    def add_centre(self, name: str, dim: int) -> None:
        """A centre buffer (1, ``dim``) and its flag ``NAME_ready``: 1 once it holds a mean
        ("first-batch" starts it at the first one)."""
        self.register_buffer(name, torch.zeros(1, dim))
        self.register_buffer(f"{name}_ready", torch.tensor(float(self.center_init == "zeros")))

    # -- data --------------------------------------------------------------------------------
    def views(self, size: tuple[int, int], data: Any = None) -> MultiCrop:
        """Two global crops at the model's (square) size and ``num_local`` local crops.

        Local crops default to 3/7 of the global size (DINO's 96 / 224), rounded
        to whole patches; ``hflip`` and ``color`` (the colour operations) unset
        (None) follow what the data declares (:func:`~vitssl.ssl.views.data_allows`).
        """
        height = square_side(self.name, size)
        patch = self.encoder.patch_size if isinstance(self.encoder.patch_size, int) else 1
        local = self.crop["local_size"] or max(patch, round(height * 3 / 7 / patch) * patch)
        return MultiCrop(height, int(local), self.crop["num_local"],
                         global_scale=self.crop["global_scale"],
                         local_scale=self.crop["local_scale"],
                         hflip=data_allows(self.crop["hflip"], data, "hflip"),
                         color=data_allows(self.crop["color"], data, "color"))

    def crops(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's global (B, 2, 3, S, S) and local (B, n, 3, s, s) crops, or an error."""
        return views(batch, "global", self.name), (batch.get("views") or {}).get("local")

    def local_logits(self, local: torch.Tensor | None) -> list[torch.Tensor]:
        """The student's logits (B, n, K) of the local crops, in a list (empty without)."""
        if local is None:
            return []
        return [self.head(self.encoder(local.flatten(0, 1))).view(*local.shape[:2], -1)]

    # -- schedules ---------------------------------------------------------------------------
    def teacher_temperature(self, step: int, total_steps: int) -> float:
        return warmup(self.warmup_teacher_temp, self.teacher_temp, self.teacher_temp_warmup,
                      step, total_steps)

    def teacher_momentum(self, step: int, total_steps: int) -> float:
        """Cosine to 1 from ``momentum``, or from the run-scaled base when it is unset."""
        return teacher_momentum(step, total_steps, self.momentum, self.update_mass,
                                PAPER_MOMENTUM)

    def with_koleo(self, loss: torch.Tensor, out: dict[str, Any],
                   features: torch.Tensor) -> torch.Tensor:
        """``loss`` plus ``koleo_weight`` × KoLeo of ``features`` (the student's pooled
        features of the first global view), its value kept in ``out["loss_koleo"]``."""
        if self.koleo_weight <= 0:
            return loss
        koleo = koleo_loss(features)
        out["loss_koleo"] = koleo.detach()
        return loss + self.koleo_weight * koleo

    # -- centring ----------------------------------------------------------------------------
    @torch.no_grad()
    def targets(self, logits: torch.Tensor, centre: str, temp: float) -> torch.Tensor:
        """The teacher's target distributions for ``logits`` (n, K), centred by ``centre``."""
        if self.centering == "sinkhorn-knopp":
            return sinkhorn_knopp(logits, temp, self.sinkhorn_iterations)
        targets = F.softmax((logits - getattr(self, centre)) / temp, dim=-1)
        sums = self._centre_sums.setdefault(centre, [None, 0])
        batch_sum = logits.sum(dim=0, keepdim=True)
        sums[0] = batch_sum if sums[0] is None else sums[0] + batch_sum
        sums[1] += logits.shape[0]
        return targets

    # -- step hooks --------------------------------------------------------------------------
    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        """Drop the last layers' gradients while they are frozen."""
        if step < self.freeze_last_layer * total_steps:
            for name in self.last_layers:
                for param in self.get_submodule(name).parameters():
                    param.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update of the teacher; centre updates from this step's teacher outputs."""
        ema_update([(self.get_submodule(t), self.get_submodule(s)) for t, s in self.ema_pairs],
                   self.teacher_momentum(step, total_steps))
        for centre, (total, count) in self._centre_sums.items():
            stats = all_reduce_(torch.cat([total.flatten(), total.new_tensor([count])]))
            buffer, ready = getattr(self, centre), getattr(self, f"{centre}_ready")
            momentum = self.center_momentum * ready  # 0 on a first-batch start
            buffer.mul_(momentum).add_((stats[:-1] / stats[-1]).view_as(buffer) * (1.0 - momentum))
            ready.fill_(1.0)
        self._centre_sums = {}
