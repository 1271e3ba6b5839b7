"""Projection and prediction MLPs with BatchNorm, shared by the contrastive objectives.

:func:`mlp` builds the heads of SimCLR / BYOL / MoCo v3 (Chen, Xie & He 2021,
facebookresearch/moco-v3 ``_build_mlp``): ``layers`` linear layers, each but
the last followed by BatchNorm and ReLU, the last optionally by a BatchNorm
without affine parameters. With BatchNorm the linear layers carry no bias (as
in the reference, the predictor's last one included).

:class:`GlobalBatchNorm1d` is ``nn.BatchNorm1d`` whose training statistics
are taken over the global batch under ``torch.distributed`` (what
``nn.SyncBatchNorm`` does on GPUs, here on any backend, gloo included), through
:func:`~vitssl.ssl.distributed.global_sum`. It keeps ``BatchNorm1d``'s state-dict keys.
"""

from __future__ import annotations

import torch
from torch import nn

from vitssl.ssl.distributed import global_sum


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over (B, C) whose batch statistics span every rank's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        x32 = x.float()
        count = global_sum(x32.new_tensor([float(x32.shape[0])]))
        mean = global_sum(x32.sum(dim=0)) / count
        var = global_sum((x32 - mean).square().sum(dim=0)) / count  # biased, as BN normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(unbiased.detach(), m)
        y = (x32 - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def freeze_last_norm_bias(encoder: nn.Module) -> None:
    """Freeze the bias of the norm that ends the encoder's pooled path.

    For a head that starts Linear -> BatchNorm the loss does not depend on that bias
    (it shifts every row alike and the BatchNorm subtracts the batch mean): its gradient
    is float noise, which Adam would turn into steps of +-lr.
    """
    fc_norm = getattr(encoder, "fc_norm", None)
    last_norm = fc_norm if isinstance(fc_norm, nn.LayerNorm) else getattr(encoder, "norm", None)
    if getattr(last_norm, "bias", None) is not None:
        last_norm.bias.requires_grad_(False)


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int, bn: bool = True,
        last_bn: bool = True) -> nn.Sequential:
    """``layers`` linear layers (BN + ReLU between them; BN without affine after the last).

    ``bn=False`` drops every BatchNorm (the linear layers then carry biases);
    ``last_bn=False`` drops only the last one (MoCo v3's predictor).
    """
    if layers < 1 or min(in_dim, hidden_dim, out_dim) < 1:
        raise ValueError(f"mlp needs layers >= 1 and dims >= 1, got {layers}, "
                         f"{(in_dim, hidden_dim, out_dim)}")
    modules: list[nn.Module] = []
    for i in range(layers):
        last = i == layers - 1
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if last else hidden_dim
        norm = bn and (last_bn or not last)
        modules.append(nn.Linear(d_in, d_out, bias=not bn))
        if not last:
            modules += [GlobalBatchNorm1d(d_out) if bn else nn.Identity(), nn.ReLU(inplace=True)]
        elif norm:
            modules.append(GlobalBatchNorm1d(d_out, affine=False))
    return nn.Sequential(*modules)
