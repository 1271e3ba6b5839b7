"""``vitssl export``: a pretrained encoder in the layouts timm and the Hugging Face hub load
(docs/export.md). When timm is installed the export is rebuilt in timm and compared first; a
fixed sin-cos position table is exported as timm's (trainable) ``pos_embed``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import vitssl
from vitssl.config import Config, normalisation
from vitssl.errors import VitsslError
from vitssl.interop import timm_architecture, to_timm_state_dict

FORMATS = ("timm", "hf")
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


def export(source: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write ``source`` (a run directory or checkpoint) as ``fmt`` into ``out``; its path."""
    from vitssl.train.checkpoint import load_encoder, read_metadata

    if fmt not in FORMATS:
        raise VitsslError(f"unknown export format '{fmt}'; accepted: {', '.join(FORMATS)}")
    source = Path(source)
    encoder, cfg = load_encoder(source, "cpu")
    run_dir = run_dir_of(source)
    metadata = read_metadata(source)
    facts = {"step": int(metadata["step"])} if "step" in metadata else {}
    if "exports" in metadata:
        facts["exported"] = json.loads(metadata["exports"]).get("encoder", "encoder")
    config = timm_config(encoder, cfg, facts)
    state = {k: v.contiguous() for k, v in to_timm_state_dict(encoder).items()}
    diff = check_with_timm(encoder, config, state)
    if out is None:
        base = run_dir if run_dir is not None else (source if source.is_dir() else source.parent)
        out = base / "export" / fmt
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if fmt == "hf":
        found = run_dir is not None and (run_dir / "summary.json").is_file()
        summary = json.loads((run_dir / "summary.json").read_text()) if found else None
        (out / CARD).write_text(model_card(config, cfg, summary, out))
    if diff is not None:
        print(f"checked: timm's {config['architecture']} gives the encoder's features "
              f"(max |diff| {diff:.1e})", file=sys.stderr)
    return out
