"""vitssl analyze: closed forms for every figure's numbers, and the command end to end."""

import json
import math

import pytest
import torch
from PIL import Image
from torch import nn

from vitssl.analyze import figures
from vitssl.analyze.attention import explicit_features, iter_attention
from vitssl.analyze.distance import mean_attention_distance
from vitssl.analyze.filters import filter_components, pixel_filters
from vitssl.analyze.position import neighbour_contrast, position_similarity, tile_grid
from vitssl.analyze.rollout import attention_rollout, rollout_map
from vitssl.cli import main
from vitssl.config import Config, ModelConfig
from vitssl.models import VisionTransformer, build_encoder
from vitssl.models.patch_embed import PatchEmbed
from vitssl.train.checkpoint import save_checkpoint


def uniform(grid, prefix=0, batch=2, heads=3):
    t = prefix + grid[0] * grid[1]
    return torch.full((batch, heads, t, t), 1.0 / t)


# -- mean attention distance -------------------------------------------------------------
def test_diagonal_attention_has_distance_zero():
    weights = torch.eye(17).expand(2, 3, 17, 17)
    assert torch.equal(mean_attention_distance(weights, (4, 4), 4, 1), torch.zeros(2, 3,
                                                                                   dtype=torch.float64))


@pytest.mark.parametrize("grid,patch,prefix,expected", [
    ((14, 14), 16, 0, 116.49),   # uniform over the patches
    ((14, 14), 16, 1, 115.90),   # the authors' convention: class-token mass counts as 0
    ((7, 7), 32, 0, 115.50),
    ((2, 2), 1, 0, (2 + math.sqrt(2)) / 4),
])
def test_uniform_attention_distance_closed_forms(grid, patch, prefix, expected):
    got = mean_attention_distance(uniform(grid, prefix), grid, patch, prefix)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, torch.full_like(got, expected), atol=5e-3, rtol=0)


def _tiny_vit(image=2, patch=1, class_token=False, depth=2, heads=2, dim=8):
    torch.manual_seed(0)
    stem = PatchEmbed(image, patch, 3, dim)
    return VisionTransformer(stem, embed_dim=dim, depth=depth, num_heads=heads, mlp_dim=16,
                             class_token=class_token,
                             pool="token" if class_token else "mean").eval()


@pytest.mark.parametrize("class_token", [False, True])
def test_zeroed_query_key_weights_give_uniform_attention(class_token):
    model = _tiny_vit(class_token=class_token)
    dim = model.embed_dim
    with torch.no_grad():
        for block in model.blocks:  # rows [0, 2D) of the packed qkv are q and k
            block.attn.qkv.weight[:2 * dim].zero_()
            block.attn.qkv.bias[:2 * dim].zero_()
    maps = [w for _, w in iter_attention(model, torch.randn(3, 3, 2, 2))]
    t = 4 + class_token
    for weights in maps:
        torch.testing.assert_close(weights, torch.full_like(weights, 1 / t))
        distance = mean_attention_distance(weights, (2, 2), 1, int(class_token))
        expected = (2 + math.sqrt(2)) / 4 * 4 / t
        torch.testing.assert_close(distance, torch.full_like(distance, expected))


def test_explicit_attention_runs_the_same_network():
    model = _tiny_vit(image=8, patch=2, class_token=True, depth=3)
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(explicit_features(model, images),
                                   model.forward_features(images), atol=1e-5, rtol=0)
    maps = [w for _, w in iter_attention(model, images)]
    assert len(maps) == 3 and maps[0].dtype == torch.float32
    assert maps[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 2, 17))
    assert not torch.allclose(maps[1], torch.full_like(maps[1], 1 / 17))  # not trivially uniform


# -- rollout -------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 3, 6])
def test_rollout_of_uniform_attention_closed_form(layers):
    n = 10
    rollout = attention_rollout([torch.full((2, 4, n, n), 1 / n)] * layers)
    expected = 2.0 ** -layers * torch.eye(n) + (1 - 2.0 ** -layers) * torch.ones(n, n) / n
    torch.testing.assert_close(rollout, expected.double().expand(2, n, n))


def test_rollout_multiplies_later_blocks_on_the_left():
    torch.manual_seed(0)
    first, second = (torch.softmax(torch.randn(1, 2, 5, 5), -1) for _ in range(2))
    hat = lambda w: (w.double().mean(1) + torch.eye(5)) / 2  # rows of w sum to 1
    torch.testing.assert_close(attention_rollout([first, second]), hat(second) @ hat(first))


def test_rollout_map_reads_the_class_row_or_the_mean_query_row():
    rollout = torch.arange(2 * 5 * 5, dtype=torch.float64).reshape(2, 5, 5)
    torch.testing.assert_close(rollout_map(rollout, (2, 2), 1), rollout[:, 0, 1:].reshape(2, 2, 2))
    no_cls = rollout[:, 1:, 1:]
    torch.testing.assert_close(rollout_map(no_cls, (2, 2), 0), no_cls.mean(1).reshape(2, 2, 2))


# -- position embeddings ------------------------------------------------------------------
def _planted(rows, cols, a=0.7, b=0.4):
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    r, c = r.flatten().double(), c.flatten().double()
    # cos similarity of these is (cos(a dr) + cos(b dc)) / 2
    return torch.stack([torch.cos(a * r), torch.sin(a * r), torch.cos(b * c),
                        torch.sin(b * c)], dim=-1)


def test_position_similarity_of_a_planted_pattern():
    rows, cols, a, b = 3, 5, 0.7, 0.4
    sim = position_similarity(_planted(rows, cols, a, b)[None], (rows, cols))
    assert sim.shape == (rows, cols, rows, cols)
    flat = sim.reshape(rows * cols, -1)
    torch.testing.assert_close(flat, flat.T)
    torch.testing.assert_close(flat.diagonal(), torch.ones(rows * cols, dtype=torch.float64))
    for r, c, r2, c2 in [(0, 0, 2, 4), (1, 3, 0, 1), (2, 2, 2, 0)]:
        expected = (math.cos(a * (r - r2)) + math.cos(b * (c - c2))) / 2
        assert sim[r, c, r2, c2].item() == pytest.approx(expected, abs=1e-12)
    # The tile at grid position (r, c) is row r * cols + c of the similarity matrix.
    canvas = tile_grid(sim)
    assert canvas.shape == (rows * (rows + 1) - 1, cols * (cols + 1) - 1)
    torch.testing.assert_close(canvas[1 * 4:1 * 4 + 3, 3 * 6:3 * 6 + 5],
                               flat[1 * cols + 3].reshape(rows, cols))


def test_row_and_column_summaries():
    rows, cols, a, b = 3, 4, 0.7, 0.4
    got = neighbour_contrast(position_similarity(_planted(rows, cols, a, b), (rows, cols)))
    # same row: dr = 0, so (1 + cos(b dc)) / 2 averaged over ordered pairs of distinct columns
    dcs = [abs(i - j) for i in range(cols) for j in range(cols) if i != j]
    assert got["same_row"] == pytest.approx(sum((1 + math.cos(b * d)) / 2 for d in dcs) / len(dcs))
    drs = [abs(i - j) for i in range(rows) for j in range(rows) if i != j]
    assert got["same_column"] == pytest.approx(sum((math.cos(a * d) + 1) / 2 for d in drs)
                                               / len(drs))
    assert got["neighbours"] > got["others"]


def test_transposed_position_embedding_gives_the_transposed_figure():
    rows, cols = 3, 5
    pos = _planted(rows, cols).reshape(rows, cols, -1)
    sim = position_similarity(pos.reshape(-1, 4), (rows, cols))
    sim_t = position_similarity(pos.transpose(0, 1).reshape(-1, 4), (cols, rows))
    torch.testing.assert_close(sim_t, sim.permute(1, 0, 3, 2))
    torch.testing.assert_close(tile_grid(sim_t), tile_grid(sim).T, equal_nan=True)


# -- filters -------------------------------------------------------------------------------
def test_filter_pca_recovers_a_planted_rank_one_pattern():
    torch.manual_seed(0)
    pattern = torch.randn(3, 4, 4, dtype=torch.float64)  # no symmetry: a wrong reshape shows
    weight = torch.randn(64, 1, 1, 1, dtype=torch.float64) * pattern + 1.0  # + a shared mean
    weight = weight + 1e-3 * torch.randn(64, 3, 4, 4, dtype=torch.float64)
    components, ratio = filter_components(weight, 28)
    assert components.shape == (28, 3, 4, 4) and ratio.shape == (28,)
    assert ratio[0] > 0.99 and torch.all(ratio[:-1] >= ratio[1:])
    unit = pattern / pattern.norm()
    sign = torch.sign((components[0] * unit).sum())
    torch.testing.assert_close(sign * components[0], unit, atol=1e-3, rtol=0)


def test_filter_components_are_capped_by_rank():
    components, ratio = filter_components(torch.randn(192, 3, 2, 2), 28)
    assert components.shape == (12, 3, 2, 2)
    assert ratio.sum().item() == pytest.approx(1.0)


def test_hybrid_stem_has_no_pixel_filters():
    encoder = build_encoder(ModelConfig(name="Ti/4", stem="resnet-tiny-hybrid", image_size=16,
                                        depth=1))
    weight, reason = pixel_filters(encoder)
    assert weight is None and "CNN" in reason
    weight, reason = pixel_filters(_tiny_vit(image=8, patch=2))
    assert weight.shape == (8, 3, 2, 2) and reason == ""


# -- the command ---------------------------------------------------------------------------
class _Holder(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder


def _run_dir(tmp_path, stem="patch", class_token=True):
    cfg = Config()
    cfg.model = ModelConfig(name="Ti/4", stem=stem, image_size=16, depth=2,
                            class_token=class_token, pool="token" if class_token else "mean")
    torch.manual_seed(0)
    run = tmp_path / f"run-{stem}"
    save_checkpoint(run, 5, _Holder(build_encoder(cfg.model)), cfg, {})
    lines = [{"step": s, "loss": 5.0 / s, "lr": 1e-4 * s, "accuracy": 0.1 * s,
              "images_per_s": 100.0} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def _check_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == figures.SIZES[path.name]


def test_analyze_writes_every_figure_and_the_numbers(tmp_path, capsys):
    run = _run_dir(tmp_path)
    out = tmp_path / "out"
    assert main(["analyze", str(run), "--images", "6", "--out", str(out)]) == 0
    for name in figures.SIZES:
        _check_png(out / name)
    record = json.loads((out / "analysis.json").read_text())
    dist = record["attention_distance"]
    assert dist["images"] == 6 and "without renormalising" in dist["convention"]
    per = torch.tensor(dist["per_layer_head"])
    assert per.shape == (2, 3)
    max_px = math.hypot(3 * 4, 3 * 4)  # corner to corner of the 4 x 4 grid of 4-px patches
    assert torch.all(per > 0) and torch.all(per < max_px)
    assert dist["features_max_abs_diff_vs_forward_features"] < 1e-4
    assert record["filters"]["available"] and record["filters"]["components"] == 28
    assert torch.tensor(record["position_embeddings"]["similarity"]).shape == (16, 16)
    assert torch.tensor(record["rollout"]["maps"]).shape == (4, 4, 4)
    assert record["rollout"]["token"] == "class-token row"
    curves = record["training_curves"]["metrics"]
    assert set(curves) == {"loss", "lr", "accuracy"} and curves["loss"]["last"] == 1.0
    assert record["step"] == 5


def test_analyze_hybrid_skips_filters_and_says_why(tmp_path, capsys):
    run = _run_dir(tmp_path, stem="resnet-tiny-hybrid", class_token=False)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "filters.png").write_bytes(b"stale")
    assert main(["analyze", str(run), "--images", "3", "--out", str(out)]) == 0
    record = json.loads((out / "analysis.json").read_text())
    assert not record["filters"]["available"] and "not pixels" in record["filters"]["reason"]
    assert not (out / "filters.png").exists()
    assert "skipped filters" in capsys.readouterr().out
    assert record["rollout"]["token"].startswith("mean over patch query rows")
    _check_png(out / "attention_distance.png")


def test_curves_only(tmp_path):
    run = _run_dir(tmp_path)
    assert main(["analyze", str(run), "--curves-only"]) == 0
    assert sorted(p.name for p in (run / "analysis").iterdir()) == ["analysis.json",
                                                                     "training_curves.png"]
    _check_png(run / "analysis" / "training_curves.png")


def test_timm_state_dict(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from vitssl.analyze.source import load_subject

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                              patch_size=4, depth=2, num_classes=10).eval()
    file = tmp_path / "timm-vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    subject = load_subject(file)
    assert subject.format == "timm" and subject.encoder.num_heads == 3
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(explicit_features(subject.encoder, x),
                                   model.forward_features(x), atol=1e-5, rtol=0)
    out = tmp_path / "out"
    assert main(["analyze", str(file), "--data", "builtin:digits", "--images", "2",
                 "--out", str(out)]) == 0
    record = json.loads((out / "analysis.json").read_text())
    assert record["format"] == "timm" and not record["training_curves"]["available"]
    assert torch.tensor(record["attention_distance"]["per_layer_head"]).shape == (2, 3)


@pytest.mark.parametrize("argv,message", [
    (["analyze", "/nonexistent/run"], "checkpoint not found"),
    (["analyze", "/nonexistent/run", "--curves-only"], "needs a run directory"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
