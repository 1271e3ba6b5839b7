"""Write an encoder as ONNX (``vitssl export --format onnx``): input ``images`` (B, C, H, W)
normalised, outputs ``features`` (B, D) pooled as the encoder pools and ``tokens`` (B, T, D)
after the final norm, the batch dimension dynamic. Checked with onnxruntime against the
encoder at two batch sizes before it counts as written."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from vitssl.errors import VitsslError
from vitssl.models import VisionTransformer
from vitssl.weights.extras import require

CHECK_ATOL = 1e-4
OPSET = 17


class _Outputs(nn.Module):
    """images -> (pooled features, tokens)."""

    def __init__(self, encoder: VisionTransformer) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.encoder.forward_features(images)
        return self.encoder.forward_head(tokens), tokens


def require_onnx() -> None:
    """One line naming the extra when onnx or onnxruntime is missing."""
    require("onnx", "--format onnx")
    require("onnxruntime", "--format onnx")


def _check(file: Path, module: nn.Module, shape: tuple[int, ...]) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    diff = 0.0
    for batch in (1, 3):  # not the traced batch size: the batch dimension is dynamic
        images = torch.randn(batch, *shape, generator=generator)
        with torch.no_grad():
            expected = module(images)
        got = session.run(None, {"images": images.numpy()})
        for ours, theirs in zip(expected, got, strict=True):
            diff = max(diff, (torch.from_numpy(theirs) - ours).abs().max().item())
            if not diff <= CHECK_ATOL * max(1.0, ours.abs().max().item()):
                raise VitsslError(f"onnxruntime's output differs from the encoder's (max |diff| "
                                  f"{diff:.2e} at batch {batch}); nothing written")
    return diff


def write_onnx(encoder: VisionTransformer, out: Path, mean: list[float],
               std: list[float]) -> float:
    """Write ``out/model.onnx`` (preprocessing in its metadata); the checked max |diff|."""
    require_onnx()
    import onnx

    module = _Outputs(copy.deepcopy(encoder).cpu().float().eval())
    module.encoder.set_attention("reference")  # plain matmul + softmax: every opset has it
    stem = encoder.patch_embed
    channels = getattr(getattr(stem, "proj", None), "in_channels", 3)
    shape = (channels, *stem.image_size)
    file = out / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape checks
        torch.onnx.export(module, (torch.zeros(2, *shape),), str(file), dynamo=False,
                          input_names=["images"], output_names=["features", "tokens"],
                          dynamic_axes={n: {0: "batch"} for n in ("images", "features",
                                                                   "tokens")},
                          opset_version=OPSET)
    model = onnx.load(str(file))
    onnx.checker.check_model(model)
    onnx.helper.set_model_props(model, {"input_size": str(list(shape)), "mean": str(mean),
                                        "std": str(std), "pooling": encoder.global_pool})
    onnx.save(model, str(file))
    return _check(file, module, shape)
