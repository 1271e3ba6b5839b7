"""iBOT: the masked patch loss against a float64 formula, block masks, EMA teacher, a CLI run."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ema_check import train_and_check_ema
from safetensors.torch import load_file
from vitssl_plugins.ibot import PAPER, Ibot, masked_patch_loss

from vitssl.cli import main as cli_main
from vitssl.config import ModelConfig
from vitssl.errors import VitsslError
from vitssl.models import build_encoder
from vitssl.models.layers import DropPath
from vitssl.ssl.distillation import dino_loss
from vitssl.ssl.masking import block_boxes, block_mask
from vitssl.train.checkpoint import latest_checkpoint, load_encoder


def _ibot(**options) -> Ibot:
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name="Ti/4", image_size=16, depth=1))
    options = {"recipe": "paper", "num_local": 1, **options}
    return Ibot(encoder, out_dim=32, hidden_dim=16, bottleneck_dim=8, **options)


def _batch(step: int = 0, total: int = 4, b: int = 3) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"views": {"global": torch.randn(b, 2, 3, 16, 16, generator=g),
                      "local": torch.randn(b, 1, 3, 8, 8, generator=g)},
            "step": step, "total_steps": total, "sample_seed": torch.arange(b) + 10 * step}


def _patch_loss64(student, targets, mask, tau) -> float:
    """Mean over images of the mean over masked n of -sum_k t log softmax(s / tau), in float64."""
    s, t = student.double(), targets.double()
    per_image = []
    for i in range(s.shape[0]):
        terms = []
        for n in range(s.shape[1]):
            if mask[i, n]:
                logits = s[i, n] / tau
                log_p = logits - torch.logsumexp(logits, dim=0)
                terms.append(float(-(t[i, n] * log_p).sum()))
        per_image.append(sum(terms) / len(terms) if terms else 0.0)
    return sum(per_image) / len(per_image)


def _fixed(seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(4, 9, 7, generator=g)
    targets = F.softmax(torch.randn(4, 9, 7, generator=g) / 0.3, dim=-1)
    mask = torch.rand(4, 9, generator=g) < 0.4
    mask[0] = False  # an image without masks counts 0
    mask[1, 0] = True
    return student, targets, mask


def test_predictions_at_unmasked_positions_do_not_change_the_patch_loss():
    student, targets, mask = _fixed()
    loss = masked_patch_loss(student, targets, mask, 0.1)
    noise = 10 * torch.randn(student.shape, generator=torch.Generator().manual_seed(1))
    at_unmasked = torch.where(mask[..., None], student, student + noise)
    assert torch.equal(masked_patch_loss(at_unmasked, targets, mask, 0.1), loss)
    at_masked = student.clone()
    at_masked[1, 0] += noise[1, 0]
    assert not torch.allclose(masked_patch_loss(at_masked, targets, mask, 0.1), loss)
    s = student.clone().requires_grad_()
    masked_patch_loss(s, targets, mask, 0.1).backward()
    assert (s.grad[~mask] == 0).all() and (s.grad[mask].abs().sum(-1) > 0).all()


def test_patch_loss_matches_the_float64_formula():
    student, targets, mask = _fixed(7)
    got = masked_patch_loss(student, targets, mask, 0.1)
    assert float(got) == pytest.approx(_patch_loss64(student, targets, mask, 0.1), rel=1e-5)


def test_forward_masks_the_student_and_sums_the_cls_and_patch_terms():
    """Mask tokens at the drawn positions, teacher unmasked, zero centres at temperature 0.04."""
    ibot = _ibot(lambda2=0.5, pred_ratio=0.4, pred_ratio_var=0.0)
    batch = _batch()
    images = batch["views"]["global"].flatten(0, 1)
    mask = ibot.masks(3, 2, (4, 4), batch["sample_seed"].tolist()).flatten(0, 1)
    assert mask.any(1).all() and not mask.all()
    with torch.no_grad():
        out = ibot(batch)
        enc = ibot.encoder
        tokens = enc.embed_patches(images)
        tokens[mask] = ibot.mask_token[0, 0]
        features = enc.encode(tokens)
        student_patch = ibot.head(features[:, 1:])
        student_cls = torch.cat([ibot.head(enc.forward_head(features)).view(3, 2, -1),
                                 ibot.head(enc(batch["views"]["local"].flatten(0, 1)))
                                 .view(3, 1, -1)], dim=1)
        teacher = ibot.teacher_encoder.forward_features(images)
        teacher_patch = ibot.teacher_head(teacher[:, 1:])
        teacher_cls = ibot.teacher_head(ibot.teacher_encoder.forward_head(teacher)).view(3, 2, -1)
    patch = _patch_loss64(student_patch, F.softmax(teacher_patch / 0.04, dim=-1), mask, 0.1)
    assert float(out["loss_patch"]) == pytest.approx(patch, rel=1e-5)
    cls = dino_loss(student_cls, teacher_cls, torch.zeros(1, 32), 0.1, 0.04)
    assert float(out["loss_cls"]) == pytest.approx(float(cls), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(cls) + 0.5 * patch, rel=1e-5)
    assert float(out["mask_ratio"]) == pytest.approx(float(mask.float().mean()))


def test_block_masks_are_few_rectangles_near_the_ratio():
    grid, target = (14, 14), 0.3 * 196
    counts, boxes_per_mask = [], []
    for seed in range(200):
        boxes = block_boxes(grid, target, random.Random(seed))
        mask = block_mask(grid, target, random.Random(seed))
        union = np.zeros(grid, dtype=bool)
        for top, left, h, w in boxes:
            assert 0 < h < 14 and 0 < w < 14 and top + h <= 14 and left + w <= 14
            union[top:top + h, left:left + w] = True
        assert np.array_equal(mask, union)
        counts.append(int(mask.sum()))
        boxes_per_mask.append(len(boxes))
    assert max(counts) <= math.floor(target)
    assert abs(np.mean(counts) / 196 - 0.3) < 0.03
    assert np.mean(boxes_per_mask) < 6  # blocks, not scattered patches


def test_masks_follow_the_sample_seed_the_ratios_and_the_start():
    ibot = _ibot(pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
    seeds = list(range(1000, 1040))
    masks = ibot.masks(40, 2, (14, 14), seeds)
    assert torch.equal(masks, ibot.masks(40, 2, (14, 14), seeds))
    assert torch.equal(masks[5:9], ibot.masks(4, 2, (14, 14), seeds[5:9]))  # any batch
    assert not torch.equal(masks, ibot.masks(40, 2, (14, 14), [s + 40 for s in seeds]))
    ratios = masks.float().mean(-1).flatten()
    assert (ratios == 0).any() and (ratios > 0.05).any() and (ratios <= 0.5).all()
    late = _ibot(pred_start=0.5)
    assert not late.masks(4, 2, (4, 4), seeds[:4], step=1, total_steps=4).any()
    assert late.masks(4, 2, (4, 4), seeds[:4], step=2, total_steps=4).any()
    assert late.patch_temperature(1, 4) == pytest.approx(0.04)
    rand = _ibot(pred_shape="rand", pred_ratio=0.25, pred_ratio_var=0.0)
    assert (rand.masks(6, 2, (4, 4), seeds[:6]).sum(-1) == 4).all()


def test_teacher_gets_no_gradient_and_is_the_ema_in_closed_form():
    ibot = _ibot(momentum=0.9, shared_head=False, patch_out_dim=24)

    def mask_token_learns():
        assert ibot.mask_token.grad is not None

    train_and_check_ema(
        ibot, [ibot.teacher_encoder, ibot.teacher_head, ibot.teacher_patch_last_layer],
        [ibot.encoder, ibot.head, ibot.patch_last_layer], _batch, base=0.9,
        each_step=mask_token_learns)
    assert ibot.patch_center.abs().sum() > 0 and ibot.center.abs().sum() > 0


def test_recipes_views_and_bad_options():
    encoder = build_encoder(ModelConfig(name="S/16", image_size=224, depth=1,
                                        drop_path_rate=0.1))
    paper = Ibot(encoder, recipe="paper")
    assert paper.head.last_layer.weight.shape == (8192, 256) and paper.shared_head
    assert not any(m.p for m in paper.teacher_encoder.modules() if isinstance(m, DropPath))
    assert paper.teacher_temperature(0, 800) == pytest.approx(0.04)
    assert paper.patch_temperature(30, 800) == pytest.approx(0.07)
    assert (PAPER["pred_ratio"], PAPER["pred_ratio_var"]) == ((0.0, 0.3), (0.0, 0.2))
    views = paper.views((224, 224), None)(torch.zeros(3, 256, 256, dtype=torch.uint8))
    assert views["global"].shape == (2, 3, 224, 224) and views["local"].shape == (10, 3, 96, 96)
    auto = _ibot(recipe="auto", num_local=None)
    assert auto.centering == "sinkhorn-knopp" and auto.koleo_weight == 0.1
    assert auto.crop["num_local"] == 0 and auto.exports() == {"encoder": "teacher_encoder"}
    for bad, match in [({"recipe": "big"}, "recipe"), ({"pred_ratio": 0.9}, "pred_ratio"),
                       ({"pred_shape": "ring"}, "pred_shape"), ({"centering": "x"}, "centering"),
                       ({"teacher_patch_temp": 0.0}, "teacher_patch_temp")]:
        with pytest.raises(VitsslError, match=match):
            _ibot(**bad)
    with pytest.raises(VitsslError, match="views"):
        _ibot()({"image": torch.randn(2, 3, 16, 16)})


def test_pretrain_cli_runs_ibot_and_exports_the_teacher(tmp_path):
    code = cli_main(["pretrain", "--objective", "ibot", "--steps", "3", "--batch-size", "8",
                     "--out", str(tmp_path), "--device", "cpu", "--set", "model.depth=1",
                     "--set", "summary_eval.enabled=false", "--set", "data.num_workers=0",
                     "--set", "objective.options.out_dim=32", "--set", "train.log_every=1"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(r["loss_patch"]) for r in rows)
    weights = load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))
    encoder, _ = load_encoder(tmp_path)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, weights[f"teacher_encoder.{key}"]), key
    assert any(not torch.equal(weights[f"teacher_encoder.{k}"], weights[f"encoder.{k}"])
               for k in encoder.state_dict() if k.startswith("blocks."))
