"""What ``vitssl analyze`` reads: a vitssl run or checkpoint, or a timm ViT state dict, whose
architecture is read off the tensor shapes (the head count, which no shape reveals, from the
ViT size table by width, or ``heads``). Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from vitssl.config import IMAGENET_MEAN, IMAGENET_STD, normalisation
from vitssl.errors import VitsslError
from vitssl.models import VARIANTS, VisionTransformer
from vitssl.models.patch_embed import PatchEmbed
from vitssl.train.runlog import METRICS

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass
class Subject:
    """An encoder to analyse and where it came from."""

    encoder: VisionTransformer
    format: str  # "vitssl" | "timm"
    path: str
    model: str
    stem: str
    step: int | None = None
    run_dir: Path | None = None
    data_spec: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: tuple[int, ...] | None = None  # the run's data.channels
    notes: list[str] = field(default_factory=list)


def find_run_dir(path: str | Path) -> Path | None:
    """The run directory holding ``metrics.jsonl`` for a run, checkpoint dir or weights file."""
    p = Path(path).resolve()
    for candidate in [p, *p.parents][:4]:
        if candidate.is_dir() and (candidate / METRICS).is_file():
            return candidate
    return None


def _has_vitssl_metadata(file: Path) -> bool:
    from vitssl.train.checkpoint import read_metadata

    return "config" in read_metadata(file)


def _read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return load_file(str(file))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickles with code, truncated files, ...
        raise VitsslError(f"cannot read '{file}' as a tensors-only state dict: "
                          f"{str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise VitsslError(f"'{file}' does not hold a state dict")
    return state


def encoder_from_timm_state(state: dict[str, torch.Tensor],
                            heads: int | None = None) -> VisionTransformer:
    """A vitssl encoder holding the weights of a timm ``VisionTransformer`` state dict."""
    state = {re.sub(r"^(module\.|model\.)", "", k): v for k, v in state.items()
             if torch.is_tensor(v)}
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    if any(k.startswith("patch_embed.backbone.") for k in state):
        raise VitsslError("this timm state dict has a hybrid (CNN) stem, whose layout its "
                          "shapes do not fix; convert the timm model with "
                          "vitssl.interop.from_timm and analyse that checkpoint instead")
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise VitsslError("not a timm ViT state dict: expected 'patch_embed.proj.weight' and "
                          "'pos_embed' keys")
    weight = state["patch_embed.proj.weight"]
    width, chans, ph, pw = weight.shape
    depth = 1 + max((int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))),
                    default=-1)
    if depth < 1:
        raise VitsslError("not a timm ViT state dict: no 'blocks.N.*' keys")
    mlp = state["blocks.0.mlp.fc1.weight"].shape[0]
    class_token = "cls_token" in state
    prefix = int(class_token)
    patches = state["pos_embed"].shape[1] - prefix
    side = math.isqrt(patches)
    if side * side != patches:
        raise VitsslError(f"the position embedding holds {patches} patches, not a square grid; "
                          f"only square-grid timm state dicts are read")
    if heads is None:
        table = [v for v in VARIANTS.values() if v.embed_dim == width]
        if not table:
            raise VitsslError(f"width {width} is not in the ViT size table; give the head "
                              f"count with --heads")
        heads = table[0].num_heads
    if width % heads:
        raise VitsslError(f"width {width} is not divisible by --heads {heads}")
    stem = PatchEmbed((side * ph, side * pw), (ph, pw), chans, width)
    fc_norm = "fc_norm.weight" in state
    encoder = VisionTransformer(stem, embed_dim=width, depth=depth, num_heads=heads,
                                mlp_dim=mlp, class_token=class_token,
                                pool="token" if class_token else "mean", fc_norm=fc_norm)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VitsslError(f"this timm state dict has parts vitssl's ViT lacks: missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]}")
    return encoder


def load_subject(path: str | Path, heads: int | None = None) -> Subject:
    """Resolve a run directory, checkpoint, or timm state dict file to an encoder in eval mode."""
    p = Path(path)
    if not p.exists():
        raise VitsslError(f"checkpoint not found: '{p}'; give a run directory, a checkpoint "
                          f"directory, a model.safetensors file or a timm ViT state dict")
    is_timm = p.is_file() and (p.suffix in TORCH_SUFFIXES or (
        p.suffix == ".safetensors" and not _has_vitssl_metadata(p)))
    if is_timm:
        encoder = encoder_from_timm_state(_read_state_dict(p), heads)
        name = f"timm ViT D={encoder.embed_dim} depth={len(encoder.blocks)} /{encoder.patch_size}"
        return Subject(encoder.eval(), "timm", str(p), name, "patch", notes=[
            "timm state dict: architecture read from tensor shapes; images normalised with "
            "ImageNet mean/std"])
    if p.is_file() and p.suffix not in (".safetensors",):
        raise VitsslError(f"'{p}' is neither a .safetensors file nor a torch state dict "
                          f"({', '.join(TORCH_SUFFIXES)})")
    from vitssl.train.checkpoint import load_encoder, weights_file

    weights = weights_file(p)
    encoder, cfg = load_encoder(weights)
    match = re.fullmatch(r"step-(\d+)", weights.parent.name)
    return Subject(encoder.eval(), "vitssl", str(weights), cfg.model.name, cfg.model.stem,
                   step=int(match[1]) if match else None, run_dir=find_run_dir(weights),
                   data_spec=cfg.data.spec, mean=normalisation(cfg.data)[0],
                   std=normalisation(cfg.data)[1], channels=cfg.data.channels)
