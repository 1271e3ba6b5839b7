"""``vitssl export``: a pretrained encoder in the layouts timm, the Hugging Face hub,
transformers and ONNX Runtime load (docs/export.md). When timm (transformers) is installed
the export is rebuilt in it and compared first, ONNX always; a fixed sin-cos position table
is exported as a (trainable) position embedding.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import vitssl
from vitssl.config import Config, normalisation
from vitssl.errors import VitsslError
from vitssl.interop import timm_architecture, to_timm_state_dict
from vitssl.outputs import check_output

FORMATS = ("timm", "hf", "transformers", "onnx")
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
CHECK_ATOL = 1e-4


def run_dir_of(path: Path) -> Path | None:
    """The run directory a run, checkpoint directory or weights file belongs to."""
    path = path.resolve()
    for candidate in (path, *path.parents[:3]):
        if (candidate / "config.yaml").is_file() and (candidate / "checkpoints").is_dir():
            return candidate
    return None


def timm_config(encoder: torch.nn.Module, cfg: Config, facts: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` timm's hub loader reads (plus a ``vitssl`` section it ignores)."""
    name, model_args, first_conv = timm_architecture(encoder)
    height, width = encoder.patch_embed.image_size
    mean, std = normalisation(cfg.data)
    pretrained = {"input_size": [encoder.in_chans, height, width], "fixed_input_size": True,
                  "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
                  "mean": list(mean), "std": list(std), "num_classes": 0,
                  "pool_size": None, "first_conv": first_conv, "classifier": "head"}
    return {"architecture": name, "num_classes": 0, "num_features": encoder.embed_dim,
            "global_pool": model_args["global_pool"], "model_args": model_args,
            "pretrained_cfg": pretrained,
            "vitssl": {"version": vitssl.__version__, "model": cfg.model.name,
                       "stem": cfg.model.stem, "pos_embed": cfg.model.pos_embed,
                       "objective": cfg.objective.name, "in_chans": encoder.in_chans,
                       "data": cfg.data.spec, "channels": cfg.data.channels, **facts}}


def check_with_timm(encoder: torch.nn.Module, config: dict[str, Any],
                    state: dict[str, torch.Tensor]) -> float | None:
    """Rebuild the export in timm and compare features; None when timm is not installed."""
    try:
        import timm
    except ImportError:
        return None
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=0,
                              **config["model_args"]).eval()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise VitsslError(f"timm's {config['architecture']} does not take these weights: "
                          f"{str(exc).splitlines()[1].strip()}") from None
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, *config["pretrained_cfg"]["input_size"], generator=generator)
    with torch.no_grad():
        ours = encoder.forward_features(images)
        diff = max((model.forward_features(images) - ours).abs().max().item(),
                   (model(images) - encoder.forward_head(ours)).abs().max().item())
    if not diff <= CHECK_ATOL * max(1.0, ours.abs().max().item()):
        raise VitsslError(f"timm's {config['architecture']} rebuilt from the export differs "
                          f"from the encoder (max |diff| {diff:.2e}); nothing written")
    return diff


def timm_load_lines(out: Path, config: dict[str, Any]) -> list[str]:
    """Python lines that load an export with timm (local folder, or the file overlay)."""
    keep = ("input_size", "interpolation", "crop_pct", "mean", "std", "num_classes")
    overlay = {"file": str(out / WEIGHTS), **{k: config["pretrained_cfg"][k] for k in keep}}
    return ["import timm",
            f"model = timm.create_model({f'local-dir:{out}'!r}, pretrained=True)",
            "# or, by name with the weights file as an overlay:",
            f"model = timm.create_model({config['architecture']!r}, pretrained=True, "
            f"num_classes=0, pretrained_cfg_overlay=dict({_kwargs(overlay)}), "
            f"{_kwargs(config['model_args'])})"]


def _kwargs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _evaluation_rows(evaluation: dict[str, Any]) -> list[str]:
    """The summary's evaluation as Markdown table rows (evaluator, metric, encoders...)."""
    encoders = ("pretrained", "random_init", "raw_pixels")
    lines = ["| evaluator | metric | " + " | ".join(e.replace("_", " ") for e in encoders)
             + " |", "|---|---|" + "---:|" * len(encoders)]
    for name, result in evaluation.items():
        if not isinstance(result, dict) or "pretrained" not in result:
            continue
        for metric in result["pretrained"]:
            cells = [result.get(e, {}).get(metric) for e in encoders]
            cells = ["" if c is None else f"{c:.2f}" for c in cells]
            lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def model_card(config: dict[str, Any], cfg: Config, summary: dict[str, Any] | None,
               out: Path) -> str:
    """A hub model card: what was trained on what, how long, and what it scored."""
    facts, args, pre = config["vitssl"], config["model_args"], config["pretrained_cfg"]
    height, width = pre["input_size"][1:]
    pool = "class token" if args["global_pool"] == "token" else "mean of the patch tokens"
    pool += " + LayerNorm (fc_norm)" if args["fc_norm"] else ""
    steps = facts.get("step", cfg.train.steps)
    options = json.dumps(cfg.objective.options, sort_keys=True)
    lines = [
        "---", "library_name: timm", "pipeline_tag: image-feature-extraction",
        f"tags: [timm, vitssl, vision-transformer, {cfg.objective.name}]", "---", "",
        f"# ViT-{cfg.model.name} pretrained with {cfg.objective.name}", "",
        f"A Vision Transformer encoder pretrained with vitssl {facts['version']}. The weights "
        f"are the objective's exported encoder (`{facts.get('exported', 'encoder')}`), "
        "without a classifier head.", "",
        "| | |", "|---|---|",
        f"| Objective | `{cfg.objective.name}`, options `{options}` |",
        f"| Data | `{cfg.data.spec}` |",
        f"| Steps | {steps} of batch {cfg.train.batch_size} (lr {cfg.train.lr:g}, "
        f"{cfg.train.schedule}) |",
        f"| Model | ViT-{cfg.model.name}, {args['depth']} blocks, {height}x{width} px, stem "
        f"`{cfg.model.stem}`, pooling: {pool} |",
        f"| timm | `{config['architecture']}` with the `model_args` of config.json |",
        f"| Inputs | {height}x{width} px, {pre['interpolation']} resize and centre crop, mean "
        f"{pre['mean']}, std {pre['std']} |", "", "## Evaluation", ""]
    if summary is None:
        lines += ["The run left no summary (`summary.json`), so there are no numbers here.", ""]
    else:
        if "final_loss" in summary:
            lines += [f"Final pretraining loss {summary['final_loss']:.4f} (mean of the last "
                      f"{summary.get('final_window', 1)} steps).", ""]
        evaluation = summary.get("evaluation") or {}
        rows = _evaluation_rows(evaluation)
        if rows:
            lines += [f"Top-1 accuracy (%) on `{evaluation.get('data', '?')}` from the run "
                      "summary: the pretrained encoder against the same architecture at "
                      "random initialisation and the raw pixels.", "", *rows, ""]
        else:
            lines += ["The run summary holds no evaluation (it was disabled).", ""]
    lines += ["## Use", "", "```python", "import timm",
              'model = timm.create_model("hf-hub:USER/NAME", pretrained=True)  # once uploaded',
              f'model = timm.create_model("local-dir:{out}", pretrained=True)  # this folder',
              "tokens = model.forward_features(images)  # (B, T, D) after the final norm",
              "pooled = model(images)                   # (B, D), num_classes=0",
              "```", "",
              "Upload the folder unchanged: `huggingface-cli upload USER/NAME .` from inside it.",
              ""]
    return "\n".join(lines)


def output_dir(source: Path, fmt: str, out: str | Path | None) -> Path:
    """Where the export goes (default ``RUN/export/FORMAT``), checked before any work."""
    if out is None:
        run_dir = run_dir_of(source)
        base = run_dir if run_dir is not None else (source if source.is_dir() else source.parent)
        out = base / "export" / fmt
    check_output("export", "out", str(out))  # also the default, which the CLI did not see
    return Path(out)


def _write_timm(encoder: torch.nn.Module, cfg: Config, source: Path, fmt: str, folder: Path,
                out: Path) -> str | None:
    """timm's layout (plus the hub model card for ``hf``); the check's line, if timm ran."""
    from vitssl.train.checkpoint import read_metadata

    metadata = read_metadata(source)
    facts = {"step": metadata["step"]} if "step" in metadata else {}
    if "exports" in metadata:
        facts["exported"] = metadata["exports"].get("encoder", "encoder")
    config = timm_config(encoder, cfg, facts)
    state = {k: v.contiguous() for k, v in to_timm_state_dict(encoder).items()}
    diff = check_with_timm(encoder, config, state)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if fmt == "hf":
        run_dir = run_dir_of(source)
        found = run_dir is not None and (run_dir / "summary.json").is_file()
        summary = json.loads((run_dir / "summary.json").read_text()) if found else None
        (folder / CARD).write_text(model_card(config, cfg, summary, out))
    return None if diff is None else (f"checked: timm's {config['architecture']} gives the "
                                      f"encoder's features (max |diff| {diff:.1e})")


def _write_transformers(encoder: torch.nn.Module, cfg: Config, source: Path, fmt: str,
                        folder: Path, out: Path) -> str | None:
    from vitssl.weights import transformers_export as tx

    card = tx.model_card(encoder, cfg, out)
    tx.write_transformers(encoder, folder, *map(list, normalisation(cfg.data)), card)
    diff = tx.check_with_transformers(folder, encoder)
    if diff is None:
        return ("not checked: transformers is not installed (pip install "
                "'vitssl[export]' to check the export against the encoder)")
    return f"checked: transformers' ViTModel gives the encoder's tokens (max |diff| {diff:.1e})"


def _write_onnx(encoder: torch.nn.Module, cfg: Config, source: Path, fmt: str, folder: Path,
                out: Path) -> str:
    from vitssl.weights.onnx_export import write_onnx

    diff = write_onnx(encoder, folder, *map(list, normalisation(cfg.data)))
    return (f"checked: onnxruntime gives the encoder's pooled features and tokens at batch "
            f"sizes 1 and 3 (max |diff| {diff:.1e})")


WRITERS = {"timm": _write_timm, "hf": _write_timm, "transformers": _write_transformers,
           "onnx": _write_onnx}


def export(source: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write ``source`` (a run directory or checkpoint) as ``fmt`` into ``out``; its path.
    Everything is written and checked in a scratch folder first: a refusal writes nothing."""
    from vitssl.train.checkpoint import load_encoder

    if fmt not in FORMATS:
        raise VitsslError(f"unknown export format '{fmt}'; accepted: {', '.join(FORMATS)}")
    if fmt == "onnx":
        from vitssl.weights.onnx_export import require_onnx

        require_onnx()
    source = Path(source)
    out = output_dir(source, fmt, out)
    encoder, cfg = load_encoder(source, "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        line = WRITERS[fmt](encoder, cfg, source, fmt, Path(scratch), out)
        out.mkdir(parents=True, exist_ok=True)
        for file in Path(scratch).iterdir():
            shutil.move(str(file), str(out / file.name))
    if line:
        print(line, file=sys.stderr)
    return out


def load_lines(source: str | Path, out: Path, fmt: str) -> list[str]:
    """Python lines that load the export of ``source`` as ``fmt`` written to ``out``."""
    if fmt == "transformers":
        from vitssl.train.checkpoint import load_encoder
        from vitssl.weights.transformers_export import pooling_text

        return ["from transformers import ViTModel",
                f"model = ViTModel.from_pretrained({str(out)!r})",
                *pooling_text(load_encoder(source)[0])]
    if fmt == "onnx":
        return ["import onnxruntime",
                f"session = onnxruntime.InferenceSession({str(out / 'model.onnx')!r})",
                "features, tokens = session.run(None, {'images': images.numpy()})"]
    return timm_load_lines(out, json.loads((out / CONFIG).read_text()))
