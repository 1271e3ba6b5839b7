"""VTAB-1k: split carving, the select-then-retrain protocol, and benchmarks/vtab.py end to end."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vitssl.cli import main as vitssl_main
from vitssl.data.tasks import load_task
from vitssl.errors import VitsslError
from vitssl.eval.vtab_protocol import Setting, pick_top1, protocol_settings, run_protocol
from vitssl.eval.vtab_splits import VtabTask, as_vtab_task, carve_indices

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train800": 10, "val200": 6, "test": 8}  # train800val200 = train800 + val200


def _load_script():
    spec = importlib.util.spec_from_file_location("vtab_script", ROOT / "benchmarks" / "vtab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_task(root: Path, name: str, num_classes: int, seed: int) -> Path:
    """A task folder in the exact vtab-1k layout: list files and images/<split>/NNNNNN.jpg."""
    rng = np.random.default_rng(seed)
    folder = root / name
    lines: dict[str, list[str]] = {}
    for split, count in SIZES.items():
        (folder / "images" / split).mkdir(parents=True)
        lines[split] = []
        for i in range(count):
            label = int(rng.integers(0, min(num_classes, 3)))
            pixels = np.full((20, 20, 3), 40 + 80 * label, np.uint8)  # brightness = class
            pixels += rng.integers(0, 20, pixels.shape, dtype=np.uint8)
            rel = f"images/{split}/{i:06d}.jpg"
            Image.fromarray(pixels).save(folder / rel, quality=95)
            lines[split].append(f"{rel} {label}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vtab-1k")
    _write_task(root, "dtd", 47, seed=1)
    _write_task(root, "eurosat", 10, seed=2)
    bad = _write_task(root, "svhn", 10, seed=3)
    rows = (bad / "val200.txt").read_text().splitlines()
    rows[2] = rows[2].rsplit(maxsplit=1)[0] + " seven"
    (bad / "val200.txt").write_text("\n".join(rows) + "\n")
    kitti = _write_task(root, "kitti", 4, seed=4)
    (kitti / "test.txt").unlink()
    (root / "not_a_task").mkdir()
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    code = vitssl_main(["pretrain", "--objective", "masked-patch", "--steps", "2",
                        "--batch-size", "8", "--image-size", "16", "--out", str(out),
                        "--device", "cpu", "--set", "model.depth=1",
                        "--set", "summary_eval.enabled=false",
                        "--set", "train.checkpoint_every=2"])
    assert code == 0
    return out


# -- splits ---------------------------------------------------------------------------------

def test_carved_splits_are_disjoint_deterministic_and_sized():
    tr, va = carve_indices(1297)
    assert (len(tr), len(va)) == (800, 200)
    assert not set(tr) & set(va) and max(tr.max(), va.max()) < 1297
    tr2, va2 = carve_indices(1297)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not np.array_equal(tr, carve_indices(1297, seed=1)[0])
    small_tr, small_va = carve_indices(50)
    assert (len(small_tr), len(small_va)) == (40, 10)


def test_vtab1k_task_reopened_with_the_real_list_files(tree):
    task = load_task(f"vtab1k:{tree}/dtd", 16)  # what `vitssl eval --data` builds
    vt = as_vtab_task(task)
    assert (len(vt.train800), len(vt.val200), len(vt.train), len(vt.test)) == (10, 6, 16, 8)
    assert vt.num_classes == 47  # from the VTAB table, not the 3 labels seen
    listed = [int(line.split()[1]) for line in (tree / "dtd/val200.txt").read_text().split("\n")
              if line]
    assert [vt.val200[i][1] for i in range(6)] == listed
    image, _ = vt.val200[0]
    assert image.shape == (3, 16, 16)
    assert torch.equal(image, task.train[10][0])  # val200 item 0 = train800val200 item 10


# -- the protocol ---------------------------------------------------------------------------

def _fake_task() -> VtabTask:
    return VtabTask("fake", ["a"] * 8, ["b"] * 2, ["a"] * 8 + ["b"] * 2, ["c"] * 5, 3)


def test_protocol_selects_on_val_then_retrains_on_train800val200():
    settings = protocol_settings("paper")
    assert [(s.options["lr"], s.options["steps"]) for s in settings] == [
        (0.001, 500), (0.001, 2500), (0.01, 500), (0.01, 2500)]
    val_score = {"lr=0.001,steps=500": 10.0, "lr=0.001,steps=2500": 30.0,
                 "lr=0.01,steps=500": 30.0, "lr=0.01,steps=2500": 20.0}
    encoder = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    calls = []

    def train_and_score(enc, task, setting):
        assert enc is not encoder  # a copy per training
        with torch.no_grad():
            enc.weight.add_(1.0)
        calls.append((len(task.train), len(task.test), setting.name))
        return val_score[setting.name] if len(task.test) == 2 else 77.0

    out = run_protocol(encoder, _fake_task(), settings, train_and_score)
    assert out.setting.name == "lr=0.001,steps=2500"  # best val; first of the tie
    assert out.top1 == 77.0 and out.val_top1 == val_score
    assert calls[:4] == [(8, 2, s.name) for s in settings]
    assert calls[4] == (10, 5, "lr=0.001,steps=2500")
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    metrics = out.metrics()
    assert metrics["vtab_top1"] == 77.0 and metrics["vtab_chosen_steps"] == 2500.0


def test_single_candidate_skips_selection():
    calls = []
    only = [Setting("only", {"lr": 1.0})]
    out = run_protocol(nn.Linear(1, 1), _fake_task(), only,
                       lambda e, t, s: calls.append(len(t.test)) or 50.0)
    assert calls == [5] and out.val_top1 == {} and out.top1 == 50.0


def test_pick_top1_prefers_the_evaluators_test_metric():
    assert pick_top1({"linear_probe_val_top1": 1.0, "linear_probe_top1": 2.0},
                     "linear-probe") == 2.0
    with pytest.raises(VitsslError, match="expected a test top-1"):
        pick_top1({"accuracy": 3.0}, "finetune")


# -- benchmarks/vtab.py end to end ----------------------------------------------------------

def _run(script, args, capsys):
    code = script.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("adapt", "override"), [("finetune", {"steps": 30}),
                                                 ("linear-probe", {"epochs": 20})])
def test_script_end_to_end_resume_and_bad_folders(tree, checkpoint, tmp_path, capsys, adapt,
                                                   override):
    script = _load_script()
    output = tmp_path / "results.json"
    args = ["--checkpoint", str(checkpoint), "--data-root", str(tree), "--protocol", "quick",
            "--adapt", adapt, "--output", str(output), "--device", "cpu",
            "--set", "{}={}".format(*next(iter(override.items())))]
    code, out, err = _run(script, args, capsys)
    assert code == 1  # two tasks failed, the others finished
    doc = json.loads(output.read_text())
    tasks = doc["tasks"]
    assert set(tasks) == {"dtd", "eurosat", "svhn", "kitti"}
    # One clear line each: which file and line; which file is missing.
    assert "val200.txt:3" in tasks["svhn"]["error"] and "seven" in tasks["svhn"]["error"]
    assert "test.txt" in tasks["kitti"]["error"]
    assert sum("svhn" in line and "val200.txt:3" in line for line in err.splitlines()) == 1
    ok = {n: t for n, t in tasks.items() if t["status"] == "ok"}
    assert set(ok) == {"dtd", "eurosat"}
    assert tasks["dtd"]["group"] == "natural" and tasks["eurosat"]["group"] == "specialized"
    for t in ok.values():
        assert t["setting_name"] in t["val_top1"] and len(t["val_top1"]) == 2
        assert t["train_sizes"] == [10, 6, 16] and t["test_size"] == 8
        correct = t["top1"] * t["test_size"] / 100  # top-1 over the whole test split
        assert abs(correct - round(correct)) < 1e-9
    summary = doc["summary"]
    top1s = [ok["dtd"]["top1"], ok["eurosat"]["top1"]]
    assert summary["mean_over_tasks"] == pytest.approx(statistics.mean(top1s))
    assert summary["groups"]["natural"]["mean"] == pytest.approx(ok["dtd"]["top1"])
    assert summary["mean_of_group_means"] == pytest.approx(statistics.mean(top1s))
    assert summary["num_tasks"] == 2 and summary["num_failed"] == 2
    assert doc["overrides"] == override
    assert "mean over 2 task(s)" in out and "mean of 2 group mean(s)" in out
    assert "65.57" in out and "52.94" in out  # reference rows
    md = output.with_suffix(".md").read_text()
    assert "| dtd |" in md and "| eurosat |" in md

    if adapt == "finetune":
        return  # resuming is the driver's job, checked once with the cheaper adaptation
    # --resume skips finished tasks; a task marked failed is run again.
    first = json.loads(output.read_text())["tasks"]
    doc["tasks"]["eurosat"] = {"status": "failed", "group": "specialized", "error": "x"}
    output.write_text(json.dumps(doc))
    code, out, err = _run(script, [*args, "--tasks", "dtd,eurosat", "--resume"], capsys)
    assert code == 1  # svhn and kitti are still recorded as failed
    again = json.loads(output.read_text())["tasks"]
    assert "dtd: done earlier" in err and "[2/2] eurosat" in err
    assert again["dtd"] == first["dtd"]  # untouched, time included
    assert again["eurosat"]["status"] == "ok"
    assert again["eurosat"]["top1"] == pytest.approx(first["eurosat"]["top1"])  # deterministic


def test_script_rejects_unknown_task_names(tree, checkpoint, capsys):
    script = _load_script()
    code, _, err = _run(script, ["--checkpoint", str(checkpoint), "--data-root", str(tree),
                                 "--tasks", "dtd,imagenet"], capsys)
    assert code == 2
    assert "unknown task(s) imagenet: neither a VTAB task" in err
    assert "caltech101" in err and "smallnorb_ele" in err
    code, _, err = _run(script, ["--checkpoint", str(checkpoint), "--tasks", "mnist"], capsys)
    assert code == 2 and "dsprites-loc, dsprites-ori, digits" in err


def test_image_size_override_resamples_position_embeddings(checkpoint):
    from vitssl.eval.vtab_suite import encoder_at
    from vitssl.train.checkpoint import load_encoder

    encoder, cfg = load_encoder(checkpoint)
    same, size = encoder_at(encoder, cfg, None)
    assert same is encoder and size == 16
    resized, size = encoder_at(encoder, cfg, 24)
    assert size == 24 and resized.grid_size == (6, 6) and resized.pos_embed.shape[1] == 37
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():  # the 16 px encoder resamples on the fly: the same function
        torch.testing.assert_close(resized(images), encoder(images))


def test_vitssl_eval_runs_the_vtab_evaluator_on_a_task_folder(tree, checkpoint, capsys):
    code = vitssl_main(["eval", "--evaluator", "vtab", "--checkpoint", str(checkpoint),
                        "--data", f"vtab1k:{tree}/eurosat", "--device", "cpu",
                        "--set", "protocol=quick", "--set", "adapt=linear-probe"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = record["metrics"]
    assert {"vtab_top1", "vtab_val200_top1", "vtab_chosen_lr"} <= set(metrics)
    # Scores on the shipped val200 list (6 images) and test list (8), not a carved split.
    for key, value in metrics.items():
        if key.startswith("vtab_val200_top1"):
            assert abs(value * 6 / 100 - round(value * 6 / 100)) < 1e-9
    assert abs(metrics["vtab_top1"] * 8 / 100 - round(metrics["vtab_top1"] * 8 / 100)) < 1e-9


def test_protocol_settings_translate_to_delegate_options():
    from vitssl_plugins.vtab import Vtab, finetune_options, linear_probe_options

    petl = protocol_settings("petl")[0].options
    ft = finetune_options(petl, 1000)  # 100 epochs of 15 full batches of 64
    assert (ft["optimizer"], ft["steps"], ft["warmup_steps"], ft["lr"], ft["weight_decay"]) \
        == ("adamw", 1500, 150, 1e-3, 1e-4)
    paper = protocol_settings("paper")[3].options
    ft = finetune_options(paper, 800)
    assert (ft["steps"], ft["batch_size"], ft["grad_clip"], ft["warmup_steps"]) == \
        (2500, 512, 1.0, 0)
    assert linear_probe_options(paper, 800)["epochs"] == 2500  # one full batch per epoch
    assert linear_probe_options({**paper, "batch_size": 100}, 800)["epochs"] == 313
    with pytest.raises(VitsslError, match="AdamW"):
        Vtab(protocol="petl", adapt="linear-probe")
    with pytest.raises(VitsslError, match="accepted: paper, petl, quick"):
        Vtab(protocol="fast")


def test_micro_batch_option_reaches_finetune_as_gradient_accumulation(monkeypatch):
    from vitssl_plugins.finetune import Finetune
    from vitssl_plugins.vtab import Vtab

    seen = []

    def record(self, encoder, task):
        seen.append((self.batch_size, self.accum_steps, self.steps))
        return {"finetune_top1": 50.0}

    monkeypatch.setattr(Finetune, "run", record)
    for protocol in ("paper", "quick"):
        vtab = Vtab(protocol=protocol, options={"micro_batch": 64}, progress=False)
        assert vtab.run(None, _fake_task())["vtab_top1"] == 50.0
    # paper: 4 candidates, then the first of the tied best retrained; 8 passes of 64.
    # quick: 2 candidates and the retraining, each fitting in one pass.
    assert seen == [(512, 8, 500), (512, 8, 2500)] * 2 + [(512, 8, 500)] + [(32, 1, 100)] * 3
    with pytest.raises(VitsslError, match="micro_batch"):
        Vtab(protocol="paper", options={"micro_batch": 100},
             progress=False).run(None, _fake_task())


def test_tasks_outside_vtab_take_no_part_in_the_vtab_means():
    from vitssl.eval.vtab_report import summarize

    summary = summarize({
        "dsprites-loc": {"status": "ok", "group": "structured", "top1": 10.0},
        "eurosat": {"status": "ok", "group": "specialized", "top1": 30.0},
        "dsprites-ori": {"status": "ok", "group": "structured", "top1": 20.0},
        "digits": {"status": "ok", "group": "other", "top1": 90.0},
    })
    assert summary["mean_over_tasks"] == pytest.approx(20.0)
    assert summary["mean_of_group_means"] == pytest.approx((15.0 + 30.0) / 2)
    assert summary["groups"]["other"]["mean"] == pytest.approx(90.0)
    assert summary["num_tasks"] == 3


def test_features_option_reaches_linear_probe_and_is_refused_for_finetune(monkeypatch):
    from vitssl_plugins.linear_probe import LinearProbe
    from vitssl_plugins.vtab import Vtab

    seen = []

    def record(self, encoder, task):
        seen.append(self.features)
        return {"linear_probe_top1": 40.0}

    monkeypatch.setattr(LinearProbe, "run", record)
    for vtab in (Vtab(protocol="quick", adapt="linear-probe", features="blocks:2",
                      progress=False),
                 Vtab(protocol="quick", adapt="linear-probe", options={"features": "mean"},
                      progress=False),
                 Vtab(protocol="quick", adapt="linear-probe", progress=False)):
        assert vtab.run(None, _fake_task())["vtab_top1"] == 40.0
    # quick: two candidates and the retraining, each probing the same feature
    assert seen == ["blocks:2"] * 3 + ["mean"] * 3 + ["pooled"] * 3
    with pytest.raises(VitsslError, match="needs adapt=linear-probe"):
        Vtab(protocol="quick", features="cls")
    with pytest.raises(VitsslError, match="unknown features"):
        Vtab(protocol="quick", adapt="linear-probe", features="last4")


# -- custom tasks in the vtab-1k layout -----------------------------------------------------

def test_custom_task_class_count_given_or_inferred(tmp_path, capsys):
    from vitssl.data.source import open_dataset

    folder = _write_task(tmp_path, "my_task", 3, seed=5)
    labels = [int(line.split()[1]) for split in ("train800", "val200", "test")
              for line in (folder / f"{split}.txt").read_text().splitlines()]
    inferred = open_dataset(f"vtab1k:{folder}:test")
    assert inferred.num_classes == max(labels) + 1 and len(inferred) == SIZES["test"]
    assert f"my_task is not a VTAB task: {max(labels) + 1} classes inferred" in \
        capsys.readouterr().err
    given = open_dataset(f"vtab1k:{folder}:classes=7:val200")
    assert given.num_classes == 7 and len(given) == SIZES["val200"]
    assert "7 classes (given)" in capsys.readouterr().err
    assert open_dataset(f"vtab1k:{folder}", num_classes=9).num_classes == 9
    task = load_task(f"vtab1k:{folder}:classes=7", 16)
    assert task.num_classes == 7 and as_vtab_task(task).num_classes == 7
    for spec, match in ((f"vtab1k:{folder}:classes=2", r"outside 0\.\.1"),
                        (f"vtab1k:{folder}:classes=0", "positive integer"),
                        (f"vtab1k:{tmp_path / 'dtd'}:classes=5", "no such task directory")):
        with pytest.raises(VitsslError, match=match):
            open_dataset(spec)
    _write_task(tmp_path, "dtd", 47, seed=6)
    with pytest.raises(VitsslError, match="VTAB task with 47 classes; got classes=5"):
        open_dataset(f"vtab1k:{tmp_path / 'dtd'}:classes=5")
    (folder / "val200.txt").unlink()
    with pytest.raises(VitsslError, match="missing list file .*val200.txt"):
        open_dataset(f"vtab1k:{folder}:test")  # inference needs all four lists


def test_script_runs_custom_tasks_in_an_other_group(checkpoint, tmp_path, capsys):
    root = tmp_path / "tree"
    _write_task(root, "eurosat", 10, seed=2)
    _write_task(root, "my_task", 3, seed=5)
    (root / "notes").mkdir()  # no list files: not a task
    script = _load_script()
    output = tmp_path / "results.json"
    args = ["--checkpoint", str(checkpoint), "--data-root", str(root), "--protocol", "quick",
            "--adapt", "linear-probe", "--output", str(output), "--device", "cpu",
            "--set", "epochs=5"]
    code, out, err = _run(script, args, capsys)
    assert code == 0
    doc = json.loads(output.read_text())
    assert set(doc["tasks"]) == {"eurosat", "my_task"}
    assert doc["tasks"]["my_task"]["group"] == "other" and "classes inferred" in err
    summary = doc["summary"]
    assert summary["num_tasks"] == 1  # the VTAB means cover eurosat only
    assert summary["mean_over_tasks"] == pytest.approx(doc["tasks"]["eurosat"]["top1"])
    assert summary["groups"]["other"]["tasks"] == ["my_task"]
    code, _, err = _run(script, [*args, "--tasks", "my_task:classes=4"], capsys)
    assert code == 0 and "my_task is not a VTAB task: 4 classes (given)" in err
    assert json.loads(output.read_text())["tasks"]["my_task"]["spec"].endswith(":classes=4")


def test_a_non_square_checkpoint_runs_at_its_larger_side():
    from vitssl.config import load_config
    from vitssl.eval.vtab_suite import encoder_at
    from vitssl.models import build_encoder

    cfg = load_config(None, ["model.image_size=[16, 24]", "model.depth=1"])
    encoder = build_encoder(cfg.model).eval()
    square, size = encoder_at(encoder, cfg, None)
    assert size == 24 and square.grid_size == (6, 6)
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():  # the 4 x 6 encoder resamples on the fly: the same function
        torch.testing.assert_close(square(images), encoder(images))
