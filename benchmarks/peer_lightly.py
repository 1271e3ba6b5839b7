"""vitssl's objectives against the same methods assembled from lightly's published components.

``--method mae|dino|moco-v3``: vitssl's objective of that name, and the method
built from lightly 1.6's modules around timm's ``VisionTransformer`` at
vitssl's model size (the default run's Ti/4 cut to ``model.depth`` blocks,
class token, mean pooling with a LayerNorm after it, at the data's image size;
the pooling follows ``model.pool`` / ``model.fc_norm``). The peers:

- mae: ``MaskedVisionTransformerTIMM`` (encoder with token dropping),
  ``MAEDecoderTIMM``, ``random_token_mask`` / ``patchify`` / ``get_at_index`` /
  ``set_at_index``;
- dino: ``DINOProjectionHead``, ``DINOLoss``, ``KoLeoLoss``, a teacher copy
  under ``deactivate_requires_grad``, ``update_momentum`` on a
  ``cosine_schedule``, ``cancel_last_layer_gradients``;
- moco-v3: ``MoCoProjectionHead`` (3 layers, BatchNorm) as projector,
  ``BYOLPredictionHead`` (Linear-BN-ReLU-Linear) as predictor, momentum copies
  of encoder and projector (``deactivate_requires_grad``, ``update_momentum``,
  ``cosine_schedule``), ``NTXentLoss`` applied to (q1, k2) and (q2, k1).

What is the same on both sides:

- data and augmentation: both read vitssl's own batch pipeline for the spec
  (with the objective's views for dino and moco-v3), built twice from the same
  resolved config and seed, so they see the same images, crops and flips in
  the same order; both pay for loading inside the timed step;
- batch, steps, optimiser settings and schedule: AdamW over vitssl's
  ``param_groups`` (lr 1e-3, wd 0.05 on weights only, betas 0.9/0.999),
  ``build_scheduler`` (30 warm-up steps then cosine to 1e-5), gradient clip 1.0
  on all parameters;
- the method's settings, read from the vitssl objective as built (so ``--set
  objective.options...`` moves both sides): mae's mask ratio 0.75 (12 of 49
  patches kept at 28 px), decoder 2 blocks x 96 wide with 3 heads, loss on
  masked patches of per-patch normalised pixels; dino's head sizes (512 hidden,
  128 bottleneck, 1024 prototypes), head BatchNorm, unnormalised last layer,
  temperatures (student 0.1, teacher 0.02), KoLeo weight 0.1 on the first
  global view, teacher momentum base (run-scaled) and the last layer frozen for
  the first 1 % of steps; moco-v3's head sizes (512 hidden, 128 out),
  temperature 0.2 with the 2 tau scale, momentum base (run-scaled), the frozen
  patch projection ("stop-grad conv1") and the frozen bias of the last norm;
- the probe: weighted k-NN (k = 20, the knn evaluator) on the pooled feature of
  the exported encoder (mae's encoder, dino's teacher, moco-v3's base encoder),
  on the same class-balanced train / test subsets.

Where the recipes differ (read the numbers with them in mind):

- all: the peer's AdamW is torch's default implementation (a per-parameter
  loop on CPU), vitssl's the fused kernel (about 9 ms of a ~370 ms MAE step on
  the shared 2-core CPU); the peer runs timm's blocks
  (``F.scaled_dot_product_attention``), vitssl its own blocks and attention
  dispatch (also SDPA on CPU); weight initialisation is each library's own
  (timm's ViT init plus lightly's re-initialisation where it does one, vitssl:
  truncated normal 0.02 for linear layers, xavier for the patch projection,
  1e-6 for the class token);
- mae: lightly initialises the encoder's (learned) position embedding to 2-D
  sin-cos and re-initialises the ViT's linear layers xavier-uniform;
  vitssl's encoder keeps the fixed table (MAE's choice, mae's default;
  ``model.pos_embed=learned`` learns one from a truncated normal), and keeps its own
  initialisation unless ``objective.options.encoder_init=xavier`` (MAE's,
  the peer's). Both decoders use
  fixed sin-cos. Mask draws: lightly one batch of uniform noise from the global
  RNG, vitssl one generator per sample seeded by its place in the stream;
- dino: ``DINOLoss`` centres the teacher with an EMA of its batch mean from
  zeros (its only mode); vitssl's default recipe balances the teacher with
  Sinkhorn-Knopp (``--set objective.options.centering=ema --set
  objective.options.center_init=zeros`` gives vitssl the peer's centring).
  neither head has a bias before its BatchNorms; lightly's
  ``cosine_schedule`` reaches 1 at step T-1, vitssl's at T;
- moco-v3: lightly 1.6 has no MoCo v3 loss; ``NTXentLoss`` (SimCLR's) counts
  the other queries of the same view as negatives too (2B-2 negatives per
  query), MoCo v3 only the B-1 other keys. lightly's projector ends in a
  BatchNorm with affine parameters and its predictor's last layer has a bias,
  vitssl's (as the reference) have neither; the frozen patch projection keeps
  timm's initialisation on the peer's side.

The two runs alternate in chunks of --chunk steps within one process, so
both see the same load on a shared machine. Time-to-quality: the training
seconds the peer needs for its final k-NN accuracy, divided by the training
seconds vitssl needs to first reach it (linear interpolation between probe
points); above 1 means vitssl gets there faster.

    python benchmarks/peer_lightly.py --data builtin:fashion-mnist --image-size 28 --steps 500
    python benchmarks/peer_lightly.py --method dino --steps 100 --probe-every 50

Needs the ``peers`` extra: ``pip install --no-deps lightly lightning-utilities``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: sleep, do not spin

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from vitssl.config import Config, image_hw, load_config, normalisation  # noqa: E402
from vitssl.data.pipeline import pretrain_batches  # noqa: E402
from vitssl.data.tasks import load_task  # noqa: E402
from vitssl.plugins import get_registry  # noqa: E402
from vitssl.ssl.ema import run_scaled_momentum  # noqa: E402
from vitssl.train import distributed  # noqa: E402
from vitssl.train.build import Run, build_run  # noqa: E402
from vitssl.train.optim import param_groups  # noqa: E402
from vitssl.train.run import exported_encoder, run_steps  # noqa: E402
from vitssl.train.schedule import build_scheduler  # noqa: E402
from vitssl.train.summary import low_data_split  # noqa: E402

NEVER = 10 ** 9


class LightlyMAE(nn.Module):
    """MAE from lightly's modules around a timm ViT; ``forward(batch)`` -> loss."""

    def __init__(self, vit: nn.Module, mask_ratio: float, decoder_dim: int, decoder_depth: int,
                 decoder_heads: int) -> None:
        super().__init__()
        from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

        self.mask_ratio = mask_ratio
        self.patch_size = vit.patch_embed.patch_size[0]
        self.sequence_length = vit.patch_embed.num_patches + vit.num_prefix_tokens
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches,
                                      patch_size=self.patch_size, embed_dim=vit.embed_dim,
                                      decoder_embed_dim=decoder_dim, decoder_depth=decoder_depth,
                                      decoder_num_heads=decoder_heads, mlp_ratio=4.0)

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.vit

    def forward(self, batch: dict[str, Any], step: int, total_steps: int) -> torch.Tensor:
        from lightly.models import utils

        images = batch["image"]
        b = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask((b, self.sequence_length),
                                                     self.mask_ratio, device=images.device)
        encoded = self.backbone.encode(images, idx_keep=idx_keep)  # (b, keep + 1, d)
        tokens = utils.repeat_token(self.decoder.mask_token, (b, self.sequence_length))
        tokens = utils.set_at_index(tokens, idx_keep, self.decoder.embed(encoded))
        pred = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), idx_mask))
        # idx_mask counts the class token at 0; the patches do not
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        return F.mse_loss(pred, (target - mean) / (var + 1e-6) ** 0.5)

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        pass

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        pass


class LightlyDINO(nn.Module):
    """DINO from lightly's head, loss and momentum utilities around a timm ViT."""

    def __init__(self, vit: nn.Module, dino: nn.Module, total_steps: int) -> None:
        super().__init__()
        from lightly.loss import DINOLoss, KoLeoLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        mlp = dino.head.mlp
        out_dim = dino.head.last_layer.out_features
        norm_last = not dino.head.last_layer.parametrizations.weight.original0.requires_grad
        warm = round(dino.teacher_temp_warmup * total_steps)
        self.base_momentum = (dino.momentum if dino.momentum is not None
                              else run_scaled_momentum(total_steps, dino.update_mass))
        self.koleo_weight = dino.koleo_weight
        self.student = vit
        def head() -> nn.Module:
            return DINOProjectionHead(
                vit.embed_dim, mlp[0].out_features, mlp[-1].out_features, out_dim,
                batch_norm=isinstance(mlp[1], nn.BatchNorm1d),
                freeze_last_layer=math.ceil(dino.freeze_last_layer * total_steps),
                norm_last_layer=norm_last)

        self.student_head = head()
        self.teacher = copy.deepcopy(vit)
        self.teacher_head = head()  # weight_norm'd heads cannot be deep-copied: load instead
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher)
        deactivate_requires_grad(self.teacher_head)
        self.loss = DINOLoss(output_dim=out_dim, warmup_teacher_temp=dino.warmup_teacher_temp,
                             teacher_temp=dino.teacher_temp, warmup_teacher_temp_epochs=warm,
                             student_temp=dino.student_temp,
                             center_momentum=dino.center_momentum)
        self.koleo = KoLeoLoss()

    @property
    def encoder(self) -> nn.Module:
        return self.teacher  # what vitssl's dino exports

    def forward(self, batch: dict[str, Any], step: int, total_steps: int) -> torch.Tensor:
        views = batch["views"]
        globals_ = list(views["global"].unbind(1))  # 2 x (B, 3, S, S)
        local = list(views["local"].unbind(1)) if "local" in views else []
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher(g)) for g in globals_]
        features = [self.student(v) for v in globals_ + local]
        student = [self.student_head(f) for f in features]
        loss = self.loss(teacher, student, epoch=step)
        if self.koleo_weight > 0:
            loss = loss + self.koleo_weight * self.koleo(features[0])
        return loss

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        self.student_head.cancel_last_layer_gradients(current_epoch=step)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, total_steps, self.base_momentum, 1.0)
        update_momentum(self.student, self.teacher, m)
        update_momentum(self.student_head, self.teacher_head, m)


class LightlyMoCoV3(nn.Module):
    """MoCo v3 from lightly's heads, NTXentLoss and momentum utilities around a timm ViT."""

    def __init__(self, vit: nn.Module, moco: nn.Module, total_steps: int) -> None:
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        hidden, out = moco.projector[0].out_features, moco.predictor[0].in_features
        self.temperature = moco.temperature
        self.base_momentum = moco.base_momentum(total_steps)
        if not moco.encoder.patch_embed.proj.weight.requires_grad:  # "stop-grad conv1"
            vit.patch_embed.proj.requires_grad_(False)
        for ours, theirs in ((moco.encoder.fc_norm, vit.fc_norm), (moco.encoder.norm, vit.norm)):
            bias = getattr(ours, "bias", None)
            if bias is not None and not bias.requires_grad:  # the last norm's, as vitssl's
                theirs.bias.requires_grad_(False)
        self.backbone = vit
        self.projector = MoCoProjectionHead(vit.embed_dim, hidden, out, num_layers=3,
                                            batch_norm=True)
        self.predictor = BYOLPredictionHead(out, hidden, out)
        self.momentum_backbone = copy.deepcopy(vit)
        self.momentum_projector = copy.deepcopy(self.projector)
        deactivate_requires_grad(self.momentum_backbone)
        deactivate_requires_grad(self.momentum_projector)
        self.loss = NTXentLoss(temperature=self.temperature)

    @property
    def encoder(self) -> nn.Module:
        return self.backbone  # what vitssl's moco-v3 exports

    def forward(self, batch: dict[str, Any], step: int, total_steps: int) -> torch.Tensor:
        x1, x2 = batch["views"]["pair"].unbind(1)
        q1, q2 = (self.predictor(self.projector(self.backbone(x))) for x in (x1, x2))
        with torch.no_grad():
            k1, k2 = (self.momentum_projector(self.momentum_backbone(x)) for x in (x1, x2))
        scale = 2.0 * self.temperature  # MoCo v3's
        return scale * (self.loss(q1, k2) + self.loss(q2, k1))

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        pass

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, total_steps, self.base_momentum, 1.0)
        update_momentum(self.backbone, self.momentum_backbone, m)
        update_momentum(self.projector, self.momentum_projector, m)


METHODS = ("mae", "dino", "moco-v3")


def peer_vit(cfg: Config, encoder: nn.Module, dynamic: bool = False) -> nn.Module:
    """timm's ``VisionTransformer`` of the vitssl encoder's size and pooling, no head."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=image_hw(cfg.model.image_size),
                             patch_size=encoder.patch_size, embed_dim=encoder.embed_dim,
                             depth=len(encoder.blocks), num_heads=encoder.num_heads,
                             num_classes=0, class_token=encoder.cls_token is not None,
                             global_pool="token" if encoder.global_pool == "token" else "avg",
                             fc_norm=not isinstance(encoder.fc_norm, nn.Identity),
                             dynamic_img_size=dynamic)


def peer_model(run: Run) -> nn.Module:
    """The lightly peer of ``run``'s objective, with its settings."""
    cfg, objective = run.cfg, run.objective
    encoder = exported_encoder(run)
    total = cfg.train.steps
    if cfg.objective.name == "mae":
        return LightlyMAE(peer_vit(cfg, encoder), objective.mask_ratio,
                          objective.decoder_embed.out_features, len(objective.decoder_blocks),
                          objective.decoder_blocks[0].attn.num_heads)
    if cfg.objective.name == "dino":
        local = objective.crop["num_local"] > 0  # smaller crops through the same ViT
        return LightlyDINO(peer_vit(cfg, encoder, dynamic=local), objective, total)
    if cfg.objective.name == "moco-v3":
        return LightlyMoCoV3(peer_vit(cfg, encoder), objective, total)
    raise ValueError(f"no lightly peer for '{cfg.objective.name}'; accepted: "
                     f"{', '.join(METHODS)}")


class Peer:
    """The peer's training state: model, optimiser, schedule and its own copy of the data."""

    def __init__(self, run: Run) -> None:
        cfg, tc = run.cfg, run.cfg.train
        torch.manual_seed(tc.seed)
        self.model = peer_model(run)
        # torch's default AdamW implementation, as a lightly user would write it
        self.optimizer = torch.optim.AdamW(param_groups(self.model, tc.weight_decay),
                                           lr=tc.lr, betas=tuple(tc.betas))
        self.scheduler = build_scheduler(self.optimizer, total_steps=tc.steps,
                                         warmup_steps=tc.warmup_steps, min_lr=tc.min_lr,
                                         schedule=tc.schedule)
        views = run.objective.views(image_hw(cfg.model.image_size), cfg.data)
        self.data = iter(pretrain_batches(cfg.data, image_size=cfg.model.image_size,
                                          batch_size=tc.batch_size, seed=tc.seed,
                                          num_steps=tc.steps, views=views))
        self.clip = tc.grad_clip
        self.total_steps = tc.steps
        self.done = 0
        self.train_time = 0.0

    def step(self) -> None:
        t0 = time.perf_counter()
        batch = next(self.data)
        step, total = self.done, self.total_steps
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(batch, step, total)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.model.before_optimizer_step(step, total)
        self.optimizer.step()
        self.scheduler.step()
        self.model.after_optimizer_step(step, total)
        self.done += 1
        self.train_time += time.perf_counter() - t0

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder  # forward(images) -> pooled (B, D)


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Training seconds at which ``curve`` first reaches ``target`` (interpolated), else None."""
    for (t0, a0), (t1, a1) in zip(curve, curve[1:], strict=False):
        if a1 >= target:
            return t1 if a1 == a0 else t0 + (t1 - t0) * max(0.0, target - a0) / (a1 - a0)
    return 0.0 if curve and curve[0][1] >= target else None


def at_time(curve: list[tuple[float, float]], t: float) -> float:
    """``curve``'s accuracy at training second ``t`` (linear interpolation)."""
    xs, ys = zip(*curve, strict=True)
    return float(np.interp(t, xs, ys))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out or tempfile.mkdtemp(prefix="vitssl-peer-")
    sets = [f"objective.name={args.method}", f"data.spec={args.data}",
            f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
            f"train.checkpoint_every={NEVER}", "summary_eval.enabled=false",
            f"out={Path(out) / f'vitssl-{args.method}'}"]
    if args.image_size:
        sets.append(f"model.image_size={args.image_size}")
    cfg = load_config(None, sets + list(args.set))
    ctx = distributed.setup(cfg.train.device)
    mean, std = normalisation(cfg.data)
    task = load_task(cfg.data.spec, image_size=cfg.model.image_size, mean=mean, std=std,
                     options=cfg.data.options)
    k = task.num_classes
    test = np.random.default_rng(1).permutation(len(task.test))[:args.probe_test]
    probe = low_data_split(task, args.probe_train // k, 0)
    probe.test = Subset(task.test, sorted(test.tolist()))
    knn = get_registry().get("evaluators", "knn")(k=[20], progress=False)

    def score(encoder: nn.Module) -> float:
        return float(knn.run(encoder, probe)["knn_k20_top1"])

    run = build_run(cfg, ctx)
    peer = Peer(run)
    curves: dict[str, list[tuple[float, float]]] = {
        "vitssl": [(0.0, score(exported_encoder(run)))], "lightly": [(0.0, score(peer.encoder))]}
    try:
        for done in run_steps(run, 0, args.steps):
            if done % args.chunk and done != args.steps:
                continue
            for _ in range(done - peer.done):  # the peer takes the same steps in turn
                peer.step()
            if done % args.probe_every == 0 or done == args.steps:
                curves["vitssl"].append((run.train_time, score(exported_encoder(run))))
                run.objective.train()
                curves["lightly"].append((peer.train_time, score(peer.encoder)))
                peer.model.train()
                print(f"step {done}: vitssl {curves['vitssl'][-1]}, lightly "
                      f"{curves['lightly'][-1]}", flush=True)
    finally:
        run.log.close()
    times = {"vitssl": run.train_time, "lightly": peer.train_time}
    equal = min(times.values())
    result: dict[str, Any] = {
        "method": args.method, "data": args.data, "steps": args.steps,
        "batch_size": args.batch_size, "set": list(args.set),
        "curves": curves, "train_s": times,
        "s_per_step": {n: t / args.steps for n, t in times.items()},
        "knn_final": {n: c[-1][1] for n, c in curves.items()},
        "equal_wallclock_s": equal,
        "knn_at_equal_wallclock": {n: at_time(c, equal) for n, c in curves.items()},
    }
    target = result["knn_final"]["lightly"]
    reach = time_to(curves["vitssl"], target)
    result["vitssl_s_to_peer_final"] = reach
    result["time_to_quality"] = times["lightly"] / reach if reach else None
    result["speed_ratio"] = times["lightly"] / times["vitssl"]
    return result


def markdown(r: dict[str, Any]) -> str:
    rows = ["| | s/step | images/s | train s | k-NN final | k-NN at "
            f"{r['equal_wallclock_s']:.0f} s |", "|---|---|---|---|---|---|"]
    method = r.get("method", "mae")
    for name in ("vitssl", "lightly"):
        per = r["s_per_step"][name]
        rows.append(f"| {name} {method} | {per:.3f} | {r['batch_size'] / per:.0f} | "
                    f"{r['train_s'][name]:.0f} | {r['knn_final'][name]:.1f} | "
                    f"{r['knn_at_equal_wallclock'][name]:.1f} |")
    reach = r["vitssl_s_to_peer_final"]
    ttq = (f"{r['time_to_quality']:.2f}x (vitssl reaches the peer's final "
           f"{r['knn_final']['lightly']:.1f} at {reach:.0f} s; the peer at "
           f"{r['train_s']['lightly']:.0f} s)" if reach else
           f"not reached: vitssl ends below the peer's final {r['knn_final']['lightly']:.1f}")
    return "\n".join([f"**{r['data']}**, {r['steps']} steps of {r['batch_size']}", "", *rows, "",
                      f"step-time ratio (peer s / vitssl s): {r['speed_ratio']:.2f}x", "",
                      f"time-to-quality (peer's final k-NN): {ttq}", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="mae")
    parser.add_argument("--data", default="builtin:fashion-mnist")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=10, help="steps per turn of each side")
    parser.add_argument("--probe-every", type=int, default=50, help="steps between k-NN probes")
    parser.add_argument("--probe-train", type=int, default=1000)
    parser.add_argument("--probe-test", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override of the vitssl run (the peer follows model/train)")
    parser.add_argument("--out", help="directory for results.json/.md and the vitssl run")
    args = parser.parse_args()
    if args.probe_every % args.chunk:
        parser.error("--probe-every must be a multiple of --chunk")
    result = measure(args)
    table = markdown(result)
    if args.out:
        Path(args.out, "results.json").write_text(json.dumps(result, indent=2) + "\n")
        Path(args.out, "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
