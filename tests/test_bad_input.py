"""Bad input of each class is one line on stderr and exit status 2, nothing written: damaged
checkpoint metadata, output paths no command may write, unreadable checkpoints on resume,
empty datasets and non-finite or out-of-range config values."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import struct
import sys
import typing
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vitssl.cli import _parser
from vitssl.cli import main as cli_main
from vitssl.config import Config, load_config
from vitssl.config_values import RANGES
from vitssl.data.source import Source, open_dataset
from vitssl.errors import VitsslError
from vitssl.outputs import OUTPUTS
from vitssl.train.checkpoint import list_checkpoints
from vitssl.train.run import pretrain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vtab as vtab_script  # noqa: E402


def _one_line_exit_2(capsys, argv: list[str], main=cli_main) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` by path -> content hash (byte-for-byte comparisons)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- checkpoint metadata: one guarded reader -------------------------------------------------

@pytest.mark.parametrize("key,value,message", [
    ("config", "{not json", "'config' is not valid JSON"),
    ("config", "[1, 2]", "'config' holds list"),
    ("exports", "encoder", "'exports' is not valid JSON"),
    ("step", "four", "'step' is not valid JSON"),
    ("config", '{"train": {"lr": "fast"}}', "records a config this version cannot use"),
])
@pytest.mark.parametrize("command", ["export-hf", "export-timm", "eval", "analyze"])
def test_damaged_checkpoint_metadata_is_one_line(tmp_path, capsys, key, value, message, command):
    metadata = {"format": "vitssl", "config": "{}", "step": "1", "exports": "{}", key: value}
    weights = tmp_path / "model.safetensors"
    save_file({"encoder.cls_token": torch.zeros(1, 1, 8)}, str(weights), metadata=metadata)
    out = tmp_path / "out"
    argv = {"export-hf": ["export", str(weights), "--format", "hf", "--out", str(out)],
            "export-timm": ["export", str(weights), "--format", "timm", "--out", str(out)],
            "eval": ["eval", "--evaluator", "knn", "--checkpoint", str(weights)],
            "analyze": ["analyze", str(weights), "--out", str(out)]}[command]
    assert message in _one_line_exit_2(capsys, argv)
    assert not out.exists()


# --- output paths: every output option of every command is checked before work ---------------

def _output_options() -> set[tuple[str, str]]:
    """(command, option) for every option of the CLI and the VTAB script that names an output."""
    subparsers = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {(name, action.dest) for name, parser in subparsers.choices.items()
             for action in parser._actions if "out" in action.dest}
    return found | {("vtab", "output")}


def test_every_output_option_is_checked():
    assert _output_options() == set(OUTPUTS)


_ARGV = {"pretrain": ["pretrain", "--steps", "1"], "export": ["export", "RUN", "--format", "timm"],
         "analyze": ["analyze", "RUN"], "shard": ["shard", "--data", "builtin:digits"],
         "vtab": ["--checkpoint", "RUN"]}


@pytest.mark.parametrize("command,option", sorted(OUTPUTS))
def test_output_paths_no_command_may_write(tmp_path, capsys, command, option):
    main = vtab_script.main if command == "vtab" else cli_main
    argv = _ARGV[command] + [f"--{option}"]
    afile = tmp_path / "a-file"
    afile.write_text("keep me")
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me too")
    before = _digest(tmp_path)
    if OUTPUTS[command, option].owns is None:  # a file: not a directory, folder writable
        bad = [str(foreign), str(afile / "inside.json")]
    else:  # a directory: not a file, not someone else's non-empty folder
        bad = [str(afile), str(afile / "sub"), str(foreign)]
    for path in bad:
        _one_line_exit_2(capsys, argv + [path], main)
    assert _digest(tmp_path) == before


# --- resume: the newest checkpoint that reads back --------------------------------------------

def _tiny_run(out: Path, **sets) -> Config:
    sets = {"model.depth": 1, "model.image_size": 16, "train.batch_size": 16, "train.steps": 4,
            "train.checkpoint_every": 2, "summary_eval.enabled": "false", "out": str(out),
            **sets}
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def test_resume_falls_back_past_a_truncated_checkpoint_exactly(tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(_tiny_run(run))
    (_, older), (_, newest) = list_checkpoints(run)
    expected = {k: v.clone() for k, v in load_file(str(newest / "model.safetensors")).items()}
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # a copy cut short
    capsys.readouterr()
    pretrain(_tiny_run(run), resume=True)  # from step 2, saying it skipped step 4
    assert f"skipped checkpoint {newest.name}" in capsys.readouterr().err
    redone = load_file(str(newest / "model.safetensors"))
    assert all(torch.equal(redone[k], v) for k, v in expected.items())

    for _, ckpt in list_checkpoints(run):  # none readable: one line, the run untouched
        (ckpt / "model.safetensors").write_bytes(b"\x00" * 16)
    before = _digest(run)
    err = _one_line_exit_2(capsys, ["pretrain", "--out", str(run), "--resume"])
    assert "no checkpoint" in err and older.name in err
    assert _digest(run) == before


# --- empty datasets ---------------------------------------------------------------------------

def _empty_idx(root: Path) -> str:
    root.mkdir()
    (root / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 0, 28, 28))
    (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 0))
    return f"idx:{root}"


def _empty_folder(root: Path) -> str:
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    return f"folder:{root}"


def _empty_shard(root: Path) -> str:
    import tarfile

    root.mkdir()
    tarfile.open(root / "shard-000000.tar", "w").close()
    return f"wds:{root}/shard-000000.tar"


@pytest.mark.parametrize("make", [_empty_idx, _empty_folder, _empty_shard])
def test_empty_datasets_are_one_line(tmp_path, capsys, make):
    spec = make(tmp_path / "data")
    out = tmp_path / "run"
    _one_line_exit_2(capsys, ["pretrain", "--steps", "1", "--data", spec, "--out", str(out)])
    assert not out.exists()


def test_open_dataset_refuses_any_sources_empty_dataset(monkeypatch):
    """The check is the core's, so a source that forgets it is still caught."""
    class Nothing(Source):
        def open(self, target, split, options):
            return []

    monkeypatch.setattr("vitssl.data.source.parse_spec", lambda spec: type(
        "Spec", (), {"kind": "nothing", "target": "x", "split": None, "source": Nothing()})())
    with pytest.raises(VitsslError, match="'nothing:x' holds no images in split 'train'"):
        open_dataset("nothing:x")


# --- config values: every number finite and in range -----------------------------------------

def _numeric_fields(cls: type = Config, prefix: str = "") -> dict[str, bool]:
    """Every numeric field of the config dataclasses -> whether it takes floats."""
    out: dict[str, bool] = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(_numeric_fields(hint, f"{prefix}{f.name}."))
            continue
        leaves = set()
        for arg in (hint, *typing.get_args(hint)):
            leaves |= {arg, *typing.get_args(arg)}
        if leaves & {int, float}:
            out[f"{prefix}{f.name}"] = float in leaves
    return out


def test_every_numeric_config_field_has_a_range():
    assert set(_numeric_fields()) == set(RANGES)


@pytest.mark.parametrize("key", sorted(_numeric_fields()))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_numeric_config_value_is_checked(key, bad):
    default = dict(_flat_defaults())[key]
    width = len(default) if isinstance(default, (list, tuple)) else 0
    value = [bad] * width if width else bad
    with pytest.raises(VitsslError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={value}"])


def _flat_defaults() -> dict:
    from vitssl.config import flatten, to_dict

    defaults = flatten(to_dict(Config()))
    return {**defaults, "data.crop_scale": [0.5, 1.0], "data.crop_ratio": [0.75, 1.33]}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    pretrain(_tiny_run(run, **{"train.steps": 2}))
    return run


@pytest.mark.parametrize("sets,message", [
    (["train.lr=nan"], "train.lr must be a finite number"),
    (["train.lr=-1"], "train.lr must be >= 0"),
    (["train.betas=[0.9, 1.5]"], "train.betas must be in [0, 1)"),
    (["model.drop_path_rate=1"], "model.drop_path_rate must be in [0, 1)"),
    (["data.translate=1.0"], "data.translate must be in [0, 1)"),
    (["data.std=[0.2, 0, 0.2]"], "data.std must be > 0"),
    (["objective.options.corrupt_ratio=inf"], "objective.options.corrupt_ratio must be a finite"),
    (["summary_eval.evaluators.few-shot.options.shots=[5, nan]"],
     "summary_eval.evaluators.few-shot.options.shots must be a finite"),
])
def test_bad_values_stop_before_anything_is_written(finished_run, tmp_path, capsys, sets,
                                                   message):
    run = finished_run
    before = _digest(run)
    argv = ["pretrain", "--out", str(run), "--resume"]
    for item in sets:
        argv += ["--set", item]
    assert message in _one_line_exit_2(capsys, argv)
    assert _digest(run) == before
    fresh = tmp_path / "fresh"
    _one_line_exit_2(capsys, ["pretrain", "--out", str(fresh), *argv[4:]])
    assert not fresh.exists()


@pytest.mark.parametrize("evaluator,option", [("linear-probe", "lr=inf"), ("knn", "k=nan"),
                                              ("few-shot", "shots=[nan]")])
def test_non_finite_evaluator_options_are_one_line(finished_run, capsys, evaluator, option):
    argv = ["eval", "--evaluator", evaluator, "--checkpoint", str(finished_run), "--set", option]
    assert option.split("=")[0] in _one_line_exit_2(capsys, argv)
