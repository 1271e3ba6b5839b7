"""A ViT state dict under timm's names (vitssl's own) -> a standalone encoder.

The architecture is read off the tensor shapes; what no shape reveals (the head count, a
non-square grid, the pooling) comes from the caller. LayerScale (``blocks.N.ls1.gamma``) is
folded into the linear layer before it: ``g * (W x + b) = (g W) x + g b``, exact.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from vitssl.errors import VitsslError
from vitssl.models import VARIANTS, VisionTransformer
from vitssl.models.patch_embed import PatchEmbed

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class Loaded:
    """Weights read from a file or folder, as a standalone encoder in eval mode."""

    encoder: VisionTransformer
    format: str  # "vitssl" | "timm" | "transformers <Class>"
    files: list[Path]
    ignored: list[str] = field(default_factory=list)  # what was read but not loaded
    notes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layer_norm_eps: float = 1e-6

    def sha256(self) -> str:
        """The content hash of the weights files read, in order."""
        digest = hashlib.sha256()
        for file in self.files:
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


def read_state_file(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file read with ``weights_only=True``."""
    if file.suffix == ".safetensors":
        try:
            return load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - a pickle renamed, a truncated file
            raise VitsslError(f"'{file}' is not a readable safetensors file: "
                              f"{str(exc).splitlines()[0]}") from None
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
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def fold_layer_scale(state: dict[str, torch.Tensor]) -> int:
    """Fold ``blocks.N.ls{1,2}.gamma`` into ``attn.proj`` / ``mlp.fc2`` in place; the count."""
    folded = 0
    for key in [k for k in state if re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", k)]:
        block, which = key.rsplit(".", 2)[0], key.split(".")[-2]
        gamma = state.pop(key)
        linear = f"{block}.attn.proj" if which == "ls1" else f"{block}.mlp.fc2"
        state[f"{linear}.weight"] = state[f"{linear}.weight"] * gamma[:, None]
        state[f"{linear}.bias"] = state[f"{linear}.bias"] * gamma
        folded += 1
    return folded


def _heads(width: int, heads: int | None) -> int:
    if heads is None:
        table = [v for v in VARIANTS.values() if v.embed_dim == width]
        if not table:
            raise VitsslError(f"width {width} is not in the ViT size table and the weights do "
                              f"not say their head count; give it with --heads")
        heads = table[0].num_heads
    if width % heads:
        raise VitsslError(f"width {width} is not divisible by {heads} heads")
    return heads


def _grid(patches: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None and grid[0] * grid[1] == patches:
        return grid
    side = math.isqrt(patches)
    if side * side != patches:
        raise VitsslError(f"the position embedding holds {patches} patches, not a square grid, "
                          f"and the weights do not say their image size")
    return side, side


def encoder_from_state(state: dict[str, torch.Tensor], *, heads: int | None = None,
                       grid: tuple[int, int] | None = None,
                       pool: str | None = None) -> tuple[VisionTransformer, list[str]]:
    """(encoder holding a timm-named ViT state dict, the keys left out: ``head.*``)."""
    state = {re.sub(r"^(module\.|model\.)", "", k): v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith("head."))
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    if any(k.startswith("patch_embed.backbone.") for k in state):
        raise VitsslError("this timm state dict has a hybrid (CNN) stem, whose layout its "
                          "shapes do not fix; convert the timm model with "
                          "vitssl.interop.from_timm instead")
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise VitsslError("not a timm ViT state dict: expected 'patch_embed.proj.weight' and "
                          "'pos_embed' keys")
    fold_layer_scale(state)
    width, chans, ph, pw = state["patch_embed.proj.weight"].shape
    depth = 1 + max((int(m[1]) for k in state if (m := _BLOCK.match(k))), default=-1)
    if depth < 1:
        raise VitsslError("not a timm ViT state dict: no 'blocks.N.*' keys")
    for i in range(depth):  # timm's qkv_bias=False: a zero bias computes the same
        state.setdefault(f"blocks.{i}.attn.qkv.bias", torch.zeros(3 * width))
    class_token = "cls_token" in state
    rows, cols = _grid(state["pos_embed"].shape[1] - int(class_token), grid)
    stem = PatchEmbed((rows * ph, cols * pw), (ph, pw), chans, width)
    encoder = VisionTransformer(
        stem, embed_dim=width, depth=depth, num_heads=_heads(width, heads),
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0], class_token=class_token,
        pool=pool or ("token" if class_token else "mean"), fc_norm="fc_norm.weight" in state)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VitsslError(f"these weights have parts vitssl's ViT lacks or lack parts it has: "
                          f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return encoder.eval(), ignored
