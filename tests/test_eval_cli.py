"""``vitssl eval`` against a checkpoint written by ``vitssl pretrain``."""

import json

import pytest

from vitssl.cli import main
from vitssl.data.tasks import load_task
from vitssl.plugins import get_registry
from vitssl.train.checkpoint import latest_checkpoint, load_encoder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["pretrain", "--objective", "masked-patch", "--steps", "2", "--batch-size", "16",
                 "--image-size", "16", "--device", "cpu", "--out", str(out),
                 "--set", "model.depth=1", "--set", "summary_eval.enabled=false"])
    assert code == 0
    return out


def _eval(capsys, *args):
    code = main(["eval", "--device", "cpu", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_few_shot_table_json_and_evals_jsonl(run_dir, capsys):
    code, out, _ = _eval(capsys, "--evaluator", "few-shot", "--checkpoint", str(run_dir),
                         "--set", "shots=[1,5]", "--set", "seeds=2")
    assert code == 0
    record = json.loads(out.strip().splitlines()[-1])
    assert record["evaluator"] == "few-shot" and record["step"] == 2
    assert record["options"] == {"shots": [1, 5], "seeds": 2}
    assert sorted(record["metrics"]) == ["fewshot_1shot_top1", "fewshot_5shot_top1"]
    assert "fewshot_5shot_top1" in out.splitlines()[-2]  # the table precedes the JSON line
    logged = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert logged[-1] == record
    # The numbers are those of the checkpoint's encoder, evaluated directly.
    encoder, cfg = load_encoder(run_dir)
    task = load_task("builtin:digits", cfg.model.image_size, mean=tuple(cfg.data.mean),
                     std=tuple(cfg.data.std))
    direct = get_registry().get("evaluators", "few-shot")(shots=[1, 5], seeds=2,
                                                          progress=False).run(encoder, task)
    assert direct == pytest.approx(record["metrics"])


@pytest.mark.parametrize("evaluator,options,key", [
    ("knn", ["k=[5]"], "knn_k5_top1"),
    ("knn", ["k=[5]", "features=blocks:1"], "knn_k5_top1"),
    ("linear-probe", ["epochs=3", "lr=[0.1]", "weight_decay=[0]"], "linear_probe_top1"),
    ("finetune", ["steps=2", "batch_size=16", "image_size=24"], "finetune_top1"),
])
def test_every_evaluator_runs_from_a_checkpoint_directory(run_dir, capsys, evaluator, options,
                                                          key):
    ckpt = latest_checkpoint(run_dir)
    args = ["--evaluator", evaluator, "--checkpoint", str(ckpt)]
    for option in options:
        args += ["--set", option]
    before = (run_dir / "evals.jsonl").read_text() if (run_dir / "evals.jsonl").exists() else ""
    code, out, _ = _eval(capsys, *args)
    assert code == 0
    metrics = json.loads(out.strip().splitlines()[-1])["metrics"]
    assert 0.0 <= metrics[key] <= 100.0
    # Not a run directory: nothing appended to the run's log.
    after = (run_dir / "evals.jsonl").read_text() if (run_dir / "evals.jsonl").exists() else ""
    assert after == before


@pytest.mark.parametrize("args,message", [
    (["--evaluator", "few-shot", "--set", "shot=3"], "accepted: shots, seeds"),
    (["--evaluator", "fewshot"], "did you mean 'few-shot'"),
    (["--evaluator", "knn", "--set", "temperature=0"], "'temperature' must be > 0"),
    (["--evaluator", "knn", "--set", "features=last4"], "accepted: pooled, cls, mean"),
])
def test_user_errors_are_one_line(run_dir, capsys, args, message):
    code, out, err = _eval(capsys, "--checkpoint", str(run_dir), *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_pre_logits_of_a_checkpoint_without_them_is_one_error_line(run_dir, capsys):
    code, _, err = _eval(capsys, "--checkpoint", str(run_dir), "--evaluator", "knn",
                         "--set", "features=pre-logits")
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and "has no pre-logits" in lines[-1]
    assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in err


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    code, _, err = _eval(capsys, "--evaluator", "knn", "--checkpoint", str(tmp_path / "none"))
    assert code == 2 and "checkpoint not found" in err
