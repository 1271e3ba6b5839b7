"""The shipped recipes (configs/): they load, they run, and they hold their sources' values."""

import dataclasses
import importlib.util
import json
import math
import shlex
from pathlib import Path

import pytest
import yaml

from vitssl.config import Config, config_from_dict, load_config
from vitssl.errors import VitsslError
from vitssl.recipes import (
    HEADER_FIELDS,
    config_file,
    configs_dir,
    eval_command,
    find_recipe,
    list_recipes,
    load_evaluation,
    load_pretrain,
    read_recipe,
    vtab_benchmark_command,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = list_recipes()
PRETRAIN = [r.name for r in RECIPES if r.kind == "pretrain"]
# The hybrid ResNet recipe's step is the slowest by far; its stem runs in test_hybrid_stem.
PRETRAIN_STEP = [pytest.param(n, marks=pytest.mark.slow) if "hybrid" in n else n
                 for n in PRETRAIN]
EVALUATE = [r.name for r in RECIPES if r.kind == "evaluate"]

# The paper's pretraining values (../shared/PAPER.md: "Pre-training (paper Table 3, section
# 4.1)" and "Masked patch prediction (section 4.6, appendix B.1.2)").
PAPER_PRETRAIN = {"batch_size": 4096, "betas": (0.9, 0.999), "warmup_steps": 10_000,
                  "grad_clip": 1.0}
PAPER_WEIGHT_DECAY = {"jft": 0.1, "in21k": 0.03}
PAPER_RECIPES = {  # recipe -> (variant/patch, stem, weight decay of its pretraining data)
    "paper-masked-patch-b16": ("B/16", "patch", PAPER_WEIGHT_DECAY["jft"]),
    "paper-supervised-b16-in21k": ("B/16", "patch", PAPER_WEIGHT_DECAY["in21k"]),
    "paper-supervised-l16-in21k": ("L/16", "patch", PAPER_WEIGHT_DECAY["in21k"]),
    "paper-hybrid-r50-b16": ("B/16", "resnet50-hybrid", PAPER_WEIGHT_DECAY["in21k"]),
}
MASKED_PATCH = {"corrupt_ratio": 0.5, "mask_prob": 0.8, "random_prob": 0.1, "bits": 3,
                "target": "mean-color"}
MASKED_PATCH_TRAINING = {"steps": 1_000_000, "lr": 2e-4, "schedule": "cosine"}
# Fine-tuning (PAPER.md "Fine-tuning (Table 4)"; ImageNet's row of Table 4).
FINETUNE = {"optimizer": "sgd", "batch_size": 512, "weight_decay": 0.0, "grad_clip": 1.0,
            "image_size": 384}
IMAGENET_FINETUNE_STEPS, IMAGENET_FINETUNE_LRS = 20_000, (0.003, 0.01, 0.03, 0.06)


def _recipe(name):
    return find_recipe(name)


def test_the_recipes_the_issue_asks_for_are_shipped():
    names = {r.name for r in RECIPES}
    assert set(PAPER_RECIPES) | {"default", "dino-s16", "mae-b16", "finetune-paper-imagenet",
                                 "vtab-paper", "vtab-petl"} <= names
    assert configs_dir() == ROOT / "configs"


@pytest.mark.parametrize("name", [r.name for r in RECIPES])
def test_every_recipe_opens_with_its_source_hardware_result_and_changes(name):
    recipe = _recipe(name)
    assert recipe.description and not recipe.description.endswith(":")
    for key in HEADER_FIELDS:
        assert len(recipe.header.get(key, "")) > 10, f"{name}: '{key}:' missing or empty"


@pytest.mark.parametrize("name", PRETRAIN)
def test_pretraining_recipes_validate_against_the_typed_config(name):
    recipe = _recipe(name)
    cfg = load_pretrain(recipe)
    assert isinstance(cfg, Config)
    # Every key written in the file is a config key (nothing silently ignored), and the
    # file's values are the config's values.
    written = yaml.safe_load(recipe.path.read_text())
    assert config_from_dict(written) == cfg


@pytest.mark.parametrize("name", PRETRAIN)
def test_an_unknown_key_in_a_recipe_fails(name, tmp_path):
    data = yaml.safe_load(_recipe(name).path.read_text())
    data.setdefault("train", {})["learning_rate"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(VitsslError, match="unknown config key 'train.learning_rate'"):
        load_pretrain(read_recipe(path))


@pytest.mark.parametrize("name", EVALUATE)
def test_evaluation_recipes_validate_against_the_evaluators_options(name, tmp_path):
    recipe = _recipe(name)
    evaluation = load_evaluation(recipe)
    assert evaluation.options
    with pytest.raises(VitsslError, match="evaluation recipe"):
        load_pretrain(recipe)
    with pytest.raises(VitsslError, match="unknown config key 'evaluate'"):
        load_config(recipe.path)  # `vitssl pretrain --config` refuses it, as any unknown key
    data = yaml.safe_load(recipe.path.read_text())
    data["evaluate"]["options"]["not_an_option"] = 1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(VitsslError, match="unknown option"):
        load_evaluation(read_recipe(tmp_path / "bad.yaml"))
    data["evaluate"].pop("options")
    data["evaluate"]["evaluatr"] = "finetune"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(VitsslError, match="'evaluate' needs"):
        load_evaluation(read_recipe(tmp_path / "bad.yaml"))


def test_the_default_recipe_is_the_run_without_a_config_and_only_scales_the_encoder():
    demo = load_pretrain(_recipe("default"))
    assert load_config() == demo  # `vitssl pretrain` without --config
    small = dict(depth=4, image_size=16, pool="mean", fc_norm=True)
    assert demo == dataclasses.replace(Config(), model=dataclasses.replace(Config().model, **small))


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_paper_recipes_hold_the_papers_pretraining_values(name):
    cfg = load_pretrain(_recipe(name))
    model, stem, weight_decay = PAPER_RECIPES[name]
    tc = cfg.train
    assert {k: getattr(tc, k) for k in PAPER_PRETRAIN} == PAPER_PRETRAIN
    assert tc.weight_decay == weight_decay
    assert (cfg.model.name, cfg.model.stem, cfg.model.image_size) == (model, stem, 224)
    assert (cfg.model.depth, cfg.model.pool) == (None, "token")  # the paper's encoder
    assert tc.batch_size % tc.accum_steps == 0
    if cfg.objective.name == "masked-patch":
        assert {k: cfg.objective.options[k] for k in MASKED_PATCH} == MASKED_PATCH
        assert {k: getattr(tc, k) for k in MASKED_PATCH_TRAINING} == MASKED_PATCH_TRAINING
    else:
        assert cfg.objective.name == "supervised"
        assert cfg.objective.options["pre_logits"] is True  # the tanh pre-logits head
        assert (tc.lr, tc.schedule, cfg.model.drop_rate) == (1e-3, "linear", 0.1)  # Table 3


def test_the_hybrid_recipe_builds_the_papers_r50_stem():
    from vitssl.plugins import get_registry

    cfg = load_pretrain(_recipe("paper-hybrid-r50-b16"))
    stem = get_registry().get("stems", cfg.model.stem)(
        image_size=cfg.model.image_size, patch_size=16, in_chans=3, embed_dim=8)
    assert tuple(len(s.blocks) for s in stem.backbone.stages) == (3, 4, 9)
    assert tuple(stem.grid_size) == (14, 14)  # 16x down at 224 px, 1x1 patches


def test_mae_recipe_holds_maes_published_settings_and_its_lr_rule():
    cfg = load_pretrain(_recipe("mae-b16"))
    tc, options = cfg.train, cfg.objective.options
    assert math.isclose(tc.lr, 1.5e-4 * tc.batch_size / 256)  # base_lr x batch / 256
    assert (tc.batch_size, tuple(tc.betas), tc.weight_decay) == (4096, (0.9, 0.95), 0.05)
    assert options["mask_ratio"] == 0.75 and options["norm_pix_loss"] is True
    assert (options["decoder_dim"], options["decoder_depth"]) == (512, 8)
    assert cfg.data.crop_scale == (0.2, 1.0) and cfg.data.hflip is True
    steps_per_epoch = 1_281_167 // tc.batch_size
    assert tc.warmup_steps == 40 * steps_per_epoch and tc.steps == 1600 * steps_per_epoch


def test_dino_recipe_holds_dinos_published_settings_and_its_lr_rule():
    import torch

    from vitssl.models import build_encoder
    from vitssl.plugins import get_registry

    cfg = load_pretrain(_recipe("dino-s16"))
    tc, options = cfg.train, cfg.objective.options
    assert math.isclose(tc.lr, 0.0005 * tc.batch_size / 256)
    assert (options["student_temp"], options["warmup_teacher_temp"],
            options["teacher_temp"]) == (0.1, 0.04, 0.07)
    assert (options["momentum"], options["center_momentum"]) == (0.996, 0.9)
    assert tuple(options["global_scale"]) == (0.4, 1.0)
    assert tuple(options["local_scale"]) == (0.05, 0.4)
    assert (options["out_dim"], options["hidden_dim"], options["bottleneck_dim"]) == \
        (65536, 2048, 256)
    assert tc.grad_clip == 3.0 and cfg.model.name == "S/16"
    epochs, per_epoch = 300, 1_281_167 // tc.batch_size
    assert tc.steps == epochs * per_epoch and tc.warmup_steps == 10 * per_epoch
    assert math.isclose(options["teacher_temp_warmup"] * epochs, 30)  # 30 warm-up epochs
    assert math.isclose(options["freeze_last_layer"] * epochs, 1, rel_tol=1e-6)  # one epoch
    small = dataclasses.replace(cfg.model, depth=1)
    dino = get_registry().get("objectives", "dino")(encoder=build_encoder(small),
                                                    **{**options, "out_dim": 16})
    size = cfg.model.image_size
    views = dino.views((size, size), cfg.data)(torch.zeros(3, 256, 256, dtype=torch.uint8))
    # 2 global crops of 224 px, 8 local of 96 px
    assert views["global"].shape == (2, 3, 224, 224)
    assert views["local"].shape == (8, 3, 96, 96)


def test_finetune_recipe_holds_table_4():
    options = load_evaluation(_recipe("finetune-paper-imagenet")).options
    assert {k: options[k] for k in FINETUNE} == FINETUNE
    assert options["steps"] == IMAGENET_FINETUNE_STEPS
    assert options["lr"] in IMAGENET_FINETUNE_LRS
    assert options["batch_size"] % options["micro_batch"] == 0


def test_vtab_recipe_runs_the_papers_sweep():
    from vitssl.eval.vtab_protocol import protocol_settings

    evaluation = load_evaluation(_recipe("vtab-paper"))
    assert evaluation.evaluator == "vtab" and evaluation.options["protocol"] == "paper"
    settings = [s.options for s in protocol_settings(evaluation.options["protocol"])]
    assert len(settings) == 4  # 2 learning rates x 2 schedules
    assert {(s["optimizer"], s["momentum"], s["batch_size"], s["weight_decay"],
             s["grad_clip"]) for s in settings} == {("sgd", 0.9, 512, 0.0, 1.0)}
    assert any((s["lr"], s["steps"]) == (0.01, 2500) for s in settings)  # Table 4's choice


def _vtab_script():
    spec = importlib.util.spec_from_file_location("vtab_script", ROOT / "benchmarks/vtab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", EVALUATE)
def test_printed_commands_carry_the_recipes_options(name):
    from vitssl.eval.run import parse_options
    from vitssl.plugins import get_registry

    evaluation = load_evaluation(_recipe(name))
    argv = shlex.split(shlex.join(eval_command(evaluation, "RUN")))
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    factory = get_registry().get("evaluators", evaluation.evaluator)
    assert parse_options(sets, factory, evaluation.evaluator) == evaluation.options
    if evaluation.evaluator == "vtab":
        args = _vtab_script().parse_args(vtab_benchmark_command(evaluation, "RUN")[2:])
        assert (args.protocol, args.adapt, args.image_size) == tuple(
            evaluation.options[k] for k in ("protocol", "adapt", "image_size"))
        delegate = dict(s.split("=", 1) for s in args.set)
        assert {k: yaml.safe_load(v) for k, v in delegate.items()} == \
            evaluation.options.get("options", {})


def _shrunk(cfg: Config, out: Path) -> Config:
    """Test-only: a 1-block Ti encoder at 2x2 patches on digits, one step, no summary eval.

    The objective (and its options), the stem and the optimiser settings stay the
    recipe's; the batch keeps the recipe's accumulation (2 images per forward pass).
    """
    patch = cfg.model.name.split("/")[1]
    cfg.model.name, cfg.model.depth, cfg.model.image_size = f"Ti/{patch}", 1, 2 * int(patch)
    cfg.data.spec, cfg.data.num_workers = "builtin:digits", 0
    cfg.train.steps, cfg.train.batch_size = 1, 2 * cfg.train.accum_steps
    cfg.train.device, cfg.train.checkpoint_every, cfg.train.log_every = "cpu", 1, 1
    cfg.summary_eval.enabled = False
    cfg.out = str(out)
    return cfg


@pytest.mark.parametrize("name", PRETRAIN_STEP)
def test_every_pretraining_recipe_runs_one_step_on_cpu(name, tmp_path):
    from vitssl.train.run import pretrain

    recipe_cfg = load_pretrain(_recipe(name))
    summary = pretrain(_shrunk(load_pretrain(_recipe(name)), tmp_path))
    assert summary["steps"] == 1 and math.isfinite(summary["final_loss"])
    saved = load_config(tmp_path / "config.yaml")
    assert saved.objective == recipe_cfg.objective
    assert saved.model.stem == recipe_cfg.model.stem
    for key in ("lr", "min_lr", "betas", "weight_decay", "warmup_steps", "schedule",
                "grad_clip", "accum_steps", "precision"):
        assert getattr(saved.train, key) == getattr(recipe_cfg.train, key), key
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1


def test_vitssl_configs_lists_and_shows_recipes(capsys):
    from vitssl.cli import main

    assert main(["configs"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == len(RECIPES)
    for line, recipe in zip(listing, RECIPES, strict=True):
        assert line.split()[:2] == [recipe.name, recipe.kind]
        assert line.endswith(recipe.description)
    assert main(["configs", "mae-b16", "--path"]) == 0
    assert capsys.readouterr().out.strip() == str(configs_dir() / "mae-b16.yaml")
    assert main(["configs", "vtab-paper"]) == 0
    shown = capsys.readouterr().out
    assert "python benchmarks/vtab.py --checkpoint RUN" in shown and "--protocol paper" in shown
    assert main(["configs", "no-such-recipe"]) == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err


def test_config_names_a_yaml_file_or_a_shipped_recipe(tmp_path, monkeypatch, capsys):
    from vitssl.cli import _parser, _pretrain_config, main

    monkeypatch.chdir(tmp_path)  # not the checkout: the README's recipe commands still work
    for name in ("dino-s16", "dino-s16.yaml", "configs/dino-s16.yaml"):
        assert config_file(name) == configs_dir() / "dino-s16.yaml"
        cfg = _pretrain_config(_parser().parse_args(["pretrain", "--config", name]))
        assert cfg == load_pretrain(_recipe("dino-s16"))
    own = tmp_path / "configs" / "dino-s16.yaml"
    own.parent.mkdir()
    own.write_text("train: {steps: 3}\n")
    assert config_file("configs/dino-s16.yaml") == Path("configs/dino-s16.yaml")  # a file wins
    for bad in ("no-such-recipe", "elsewhere/dino-s16.yaml", "dino-s16.json"):
        with pytest.raises(VitsslError, match="config file not found: .*shipped recipe"):
            config_file(bad)
    assert main(["pretrain", "--config", "no-such-recipe"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mae-b16" in err
    assert main(["configs", "mae-b16"]) == 0
    assert "vitssl pretrain --config mae-b16" in capsys.readouterr().out
