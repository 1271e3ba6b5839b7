"""vitssl's MAE against the same method assembled from lightly's published components.

The peer is lightly's ``MaskedVisionTransformerTIMM`` (encoder with token
dropping), ``MAEDecoderTIMM`` and ``random_token_mask`` / ``patchify`` /
``get_at_index`` / ``set_at_index`` around timm's ``VisionTransformer`` built at
vitssl's default model size (Ti/4: width 192, 3 heads, here cut to
``model.depth`` blocks, class token, mean pooling with a LayerNorm after it,
at the data's image size). What is the same on both sides:

- data and augmentation: both read vitssl's own batch pipeline for the spec,
  built twice from the same resolved config and seed, so they see the same
  images, crops and flips in the same order; both pay for loading inside the
  timed step;
- batch, steps, optimiser and schedule: vitssl's ``build_optimizer`` (AdamW,
  lr 1e-3, wd 0.05 on weights only, betas 0.9/0.999) and ``build_scheduler``
  (30 warm-up steps then cosine to 1e-5), gradient clip 1.0 on all parameters;
- the method: mask ratio 0.75 (12 of 49 patches kept at 28 px), decoder
  2 blocks x 96 wide with the encoder's 3 heads (vitssl mae's defaults for a
  192-wide encoder), loss the mean squared error on masked patches only, each
  target patch normalised by its own mean and variance (``norm_pix_loss``);
- the probe: weighted k-NN (k = 20, the knn evaluator) on the pooled feature,
  on the same class-balanced train / test subsets.

Where the recipes differ (not changed here; read the numbers with them in mind):

- position embeddings: lightly initialises the encoder's (learned) position
  embedding to 2-D sin-cos; vitssl's encoder learns its own from a truncated
  normal. Both decoders use fixed sin-cos;
- weight initialisation: lightly re-initialises the ViT's linear layers
  xavier-uniform (as MAE's code) and its class token with std 0.02; vitssl
  uses truncated normal (std 0.02) for linear layers, xavier for the patch
  projection and std 1e-6 for the class token;
- mask draws: lightly draws one batch of uniform noise from the global RNG,
  vitssl one generator per sample seeded by its position in the stream (for
  exact resumption);
- code paths: the peer runs timm's blocks (``F.scaled_dot_product_attention``),
  vitssl its own blocks and attention dispatch; that is what the step-time
  ratio measures.

The two runs alternate in chunks of --chunk steps within one process, so
both see the same load on a shared machine. Time-to-quality: the training
seconds the peer needs for its final k-NN accuracy, divided by the training
seconds vitssl needs to first reach it (linear interpolation between probe
points); above 1 means vitssl gets there faster. MAE only: a DINO peer is not
built yet.

    python benchmarks/peer_lightly.py --data builtin:fashion-mnist --image-size 28 --steps 500

Needs the ``peers`` extra: ``pip install --no-deps lightly lightning-utilities``.
"""

from __future__ import annotations

import argparse
import json
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

from vitssl.config import Config, image_hw, load_config  # noqa: E402
from vitssl.data.pipeline import pretrain_batches  # noqa: E402
from vitssl.data.tasks import load_task  # noqa: E402
from vitssl.plugins import get_registry  # noqa: E402
from vitssl.train import distributed  # noqa: E402
from vitssl.train.build import Run, build_run  # noqa: E402
from vitssl.train.optim import build_optimizer  # noqa: E402
from vitssl.train.run import close, exported_encoder  # noqa: E402
from vitssl.train.schedule import build_scheduler  # noqa: E402
from vitssl.train.step import train_step  # noqa: E402
from vitssl.train.summary import low_data_split  # noqa: E402

NEVER = 10 ** 9


class LightlyMAE(nn.Module):
    """MAE from lightly's modules around a timm ViT; ``forward(images)`` -> loss."""

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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from lightly.models import utils

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


def peer_vit(cfg: Config, encoder: nn.Module) -> nn.Module:
    """timm's ``VisionTransformer`` of the vitssl encoder's size, mean-pooled, no head."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=image_hw(cfg.model.image_size),
                             patch_size=encoder.patch_size, embed_dim=encoder.embed_dim,
                             depth=len(encoder.blocks),
                             num_heads=encoder.num_heads, num_classes=0, global_pool="avg",
                             class_token=True, fc_norm=True)


class Peer:
    """The peer's training state: model, optimiser, schedule and its own copy of the data."""

    def __init__(self, run: Run) -> None:
        cfg, tc = run.cfg, run.cfg.train
        encoder = exported_encoder(run)
        options = run.objective_options
        torch.manual_seed(tc.seed)
        width = encoder.embed_dim
        self.model = LightlyMAE(peer_vit(cfg, encoder), float(options.get("mask_ratio", 0.75)),
                                int(options.get("decoder_dim") or width // 2),
                                int(options.get("decoder_depth") or 2),
                                int(options.get("decoder_heads") or encoder.num_heads))
        self.optimizer = build_optimizer(self.model, lr=tc.lr, weight_decay=tc.weight_decay,
                                         betas=tuple(tc.betas))
        self.scheduler = build_scheduler(self.optimizer, total_steps=tc.steps,
                                         warmup_steps=tc.warmup_steps, min_lr=tc.min_lr,
                                         schedule=tc.schedule)
        self.data = iter(pretrain_batches(cfg.data, image_size=cfg.model.image_size,
                                          batch_size=tc.batch_size, seed=tc.seed,
                                          num_steps=tc.steps))
        self.clip = tc.grad_clip
        self.train_time = 0.0

    def step(self) -> None:
        t0 = time.perf_counter()
        images = next(self.data)["image"]
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(images)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.train_time += time.perf_counter() - t0

    @property
    def encoder(self) -> nn.Module:
        return self.model.backbone.vit  # forward(images) -> pooled (B, D)


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
    sets = ["objective.name=mae", f"data.spec={args.data}", f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}", f"train.checkpoint_every={NEVER}",
            "summary_eval.enabled=false", f"out={Path(out) / 'vitssl-mae'}"]
    if args.image_size:
        sets.append(f"model.image_size={args.image_size}")
    cfg = load_config(None, sets + list(args.set))
    ctx = distributed.setup(cfg.train.device)
    task = load_task(cfg.data.spec, image_size=cfg.model.image_size, mean=tuple(cfg.data.mean),
                     std=tuple(cfg.data.std), options=cfg.data.options)
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
    done = 0
    try:
        while done < args.steps:
            chunk = range(done, min(args.steps, done + args.chunk))
            for step in chunk:
                train_step(run, step)
                if run.metrics.due(step + 1):
                    run.metrics.flush(run.log, cfg.train.batch_size)
            for _ in chunk:
                peer.step()
            done = chunk[-1] + 1
            if done % args.probe_every == 0 or done == args.steps:
                curves["vitssl"].append((run.train_time, score(exported_encoder(run))))
                run.objective.train()
                curves["lightly"].append((peer.train_time, score(peer.encoder)))
                peer.model.train()
                print(f"step {done}: vitssl {curves['vitssl'][-1]}, lightly "
                      f"{curves['lightly'][-1]}", flush=True)
    finally:
        close(run)
    times = {"vitssl": run.train_time, "lightly": peer.train_time}
    equal = min(times.values())
    result: dict[str, Any] = {
        "data": args.data, "steps": args.steps, "batch_size": args.batch_size,
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
    for name in ("vitssl", "lightly"):
        per = r["s_per_step"][name]
        rows.append(f"| {name} MAE | {per:.3f} | {r['batch_size'] / per:.0f} | "
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
