"""``--init PATH`` (``model.init``): start a run's encoder from weights in any layout.

The encoder is loaded before the objective is built (so a teacher or momentum encoder copied
from it starts from the same weights) and every encoder-shaped ViT inside the objective is
set to them again afterwards (an objective that re-initialised its encoder, a teacher copied
before that). Learned position embeddings are resampled to the run's grid by the 2-D
interpolation of the paper's section 3.2; a fixed sin-cos table stays the run's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitssl.errors import VitsslError
from vitssl.models import VisionTransformer
from vitssl.models.pos_embed import resample_pos_embed
from vitssl.weights.layouts import read_encoder
from vitssl.weights.state import Loaded

_EPS = 1e-6  # vitssl's LayerNorm eps


def _shape(encoder: VisionTransformer) -> dict[str, object]:
    stem = encoder.patch_embed
    proj = getattr(stem, "proj", None)
    return {"patch size": encoder.patch_size, "width": encoder.embed_dim,
            "depth": len(encoder.blocks), "heads": encoder.num_heads,
            "MLP width": encoder.blocks[0].mlp.fc1.out_features,
            "channels": proj.in_channels if isinstance(proj, nn.Conv2d) else None,
            "stem": type(stem).__name__, "class token": encoder.cls_token is not None,
            "fc_norm": not isinstance(encoder.fc_norm, nn.Identity)}


def check_compatible(encoder: VisionTransformer, loaded: Loaded, source: str) -> None:
    """Refuse, naming both values, weights of another architecture than the run's."""
    ours, theirs = _shape(encoder), _shape(loaded.encoder)
    for what, value in ours.items():
        if theirs[what] != value:
            raise VitsslError(f"--init {source}: its {what} is {theirs[what]}, the run's is "
                              f"{value}; change the run's model to match")


def _position_table(encoder: VisionTransformer, loaded: Loaded) -> tuple[torch.Tensor, str]:
    """(the table the run starts from, what happened to the loaded one)."""
    src = loaded.encoder
    old, new = tuple(src.grid_size), tuple(encoder.grid_size)
    table = resample_pos_embed(src.pos_embed.detach(), old, new, src.num_prefix_tokens)
    moved = f"resampled {old[0]}x{old[1]} -> {new[0]}x{new[1]}" if old != new else "loaded"
    if encoder.fixed_pos_embed:
        if old == new and torch.allclose(table, encoder.pos_embed, atol=1e-6):
            return encoder.pos_embed.detach(), "the same fixed sin-cos table"
        return encoder.pos_embed.detach(), ("pos_embed ignored: the run's table is fixed "
                                            "sin-cos (model.pos_embed=learned trains it)")
    return table, f"pos_embed {moved}"


def init_state(encoder: VisionTransformer, loaded: Loaded,
               source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the state the run's encoder starts from, notes on what was adapted)."""
    check_compatible(encoder, loaded, source)
    state = {k: v.detach().clone() for k, v in loaded.encoder.state_dict().items()}
    state["pos_embed"], pos_note = _position_table(encoder, loaded)
    notes = [pos_note, *loaded.notes]
    if abs(loaded.layer_norm_eps - _EPS) > 1e-12:
        notes.append(f"LayerNorm eps {loaded.layer_norm_eps:g} read as vitssl's {_EPS:g}")
    return {k: state[k] for k in encoder.state_dict()}, notes


def resume_conflict(run_dir: str | Path) -> VitsslError:
    """The error for ``--init`` given to ``--resume`` a run that has checkpoints."""
    return VitsslError(f"--init cannot be combined with --resume on a run that has "
                       f"checkpoints ({run_dir}); its weights come from its checkpoint")


@dataclass
class Init:
    """Weights read for a run's encoder, and the one line the run prints about them."""

    loaded: Loaded
    state: dict[str, torch.Tensor]
    notes: list[str]
    sha256: str
    line: str = ""

    def start(self, objective: nn.Module, encoder: nn.Module) -> str:
        """Set the built objective's encoder-shaped ViTs to the weights; the line."""
        copies, fresh = start_objective(objective, encoder, self.state)
        self.line = init_line(self.loaded, self.sha256, self.notes, copies, fresh)
        return self.line


def load_init(path: str, encoder: VisionTransformer, expected_sha256: str | None) -> Init:
    """Read ``path`` into ``encoder`` (a bare state dict takes the encoder's heads and grid);
    ``expected_sha256``, when set, must be the weights' content hash."""
    with torch.random.fork_rng(devices=[]):  # the run draws what it draws without --init
        loaded = read_encoder(path, heads=encoder.num_heads, grid=tuple(encoder.grid_size))
    sha = loaded.sha256()
    if expected_sha256 and sha != expected_sha256:
        raise VitsslError(f"--init {path}: content hash {sha[:12]}... is not "
                          f"model.init_sha256 {expected_sha256[:12]}...; the file changed")
    state, notes = init_state(encoder, loaded, path)
    encoder.load_state_dict(state)
    return Init(loaded, state, notes, sha)


def _same_shapes(module: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = module.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == v.shape for k, v in state.items())


def start_objective(objective: nn.Module, encoder: nn.Module,
                    state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Set every encoder-shaped ViT of ``objective`` to ``state``; (their names besides the
    encoder's, the other parts, which start fresh)."""
    copies, covered = [], set()
    for name, module in objective.named_modules():
        if isinstance(module, VisionTransformer) and _same_shapes(module, state):
            module.load_state_dict(state)
            covered.add(name)
            if module is not encoder:
                copies.append(name)
    fresh = [name for name, child in objective.named_children()
             if name not in covered and any(True for _ in child.state_dict())]
    fresh += [name for name, _ in objective.named_parameters(recurse=False)]
    return copies, fresh


def _grouped(keys: list[str]) -> str:
    """``head.weight, head.bias, pooler.x`` -> ``head.*, pooler.x``."""
    firsts = [k.split(".")[0] for k in keys]
    names = [f"{f}.*" if firsts.count(f) > 1 else k for f, k in zip(firsts, keys, strict=True)]
    return ", ".join(dict.fromkeys(names)) or "nothing"


def init_line(loaded: Loaded, sha: str, notes: list[str], copies: list[str],
              fresh: list[str]) -> str:
    """The one line a run prints about its ``--init``: loaded, adapted, fresh, ignored."""
    parts = [f"init: encoder from {Path(loaded.files[0])} ({loaded.format}, sha256 "
             f"{sha[:12]})", *notes]
    if copies:
        parts.append(f"also into {', '.join(copies)}")
    parts.append(f"fresh: {', '.join(fresh) or 'nothing'}")
    parts.append(f"ignored: {_grouped(loaded.ignored)}")
    return "; ".join(parts)
