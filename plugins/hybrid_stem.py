"""Hybrid stems: a BiT-style ResNet whose feature map is cut into 1x1 patches.

The paper's hybrids (R50+ViT-B/16 and friends) feed a ResNet feature map to the
transformer: GroupNorm instead of BatchNorm, weight-standardised convolutions
with TensorFlow "SAME" padding, and the ResNet v1.5 bottleneck (stride on the
3x3 convolution, ReLU after the residual sum); ``preact=True`` swaps in BiT's
pre-activation bottlenecks. A 1x1 (or k x k) projection maps the feature
channels to the width D. Parameter names follow timm's ``HybridEmbed`` over
``ResNetV2``, so timm hybrid weights map one-to-one (:func:`vitssl.interop.from_timm`).

The registered stems are the ``LAYOUTS`` below; for each, ``patch_size`` (pixels
per token) is the backbone's down-sampling times the projection's kernel.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import vitssl
from vitssl.errors import VitsslError
from vitssl.models.patch_embed import token_grid
from vitssl.models.sizes import to_pair

RESNET_CHANNELS = (256, 512, 1024, 2048)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis: output ceil(size / stride)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def standardize_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Each output filter shifted to zero mean and scaled to unit (biased) variance."""
    # Batch norm over a (1, out, fan_in) view normalises each filter in one fused kernel.
    flat = weight.reshape(1, weight.shape[0], -1)
    return F.batch_norm(flat, None, None, training=True, momentum=0.0,
                        eps=eps).reshape_as(weight)


class StdConv2dSame(nn.Conv2d):
    """Weight-standardised convolution with "SAME" padding and no bias."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 eps: float = 1e-8) -> None:
        # Stride 1 with an odd kernel pads symmetrically, so the convolution can do it.
        static = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_chs, out_chs, kernel_size, stride,
                         padding=(kernel_size - 1) // 2 if static else 0, bias=False)
        self.dynamic_pad = not static
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_pad:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        weight = standardize_weight(self.weight, self.eps)
        return F.conv2d(x, weight, None, self.stride, self.padding)


class MaxPool2dSame(nn.MaxPool2d):
    """Max pooling with "SAME" padding (padded cells never win)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, value=-math.inf)
        return F.max_pool2d(x, self.kernel_size, self.stride)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm, optionally followed by ReLU."""

    def __init__(self, channels: int, num_groups: int = 32, act: bool = True) -> None:
        if channels % num_groups:
            raise VitsslError(f"{channels} channels cannot be split into {num_groups} "
                              f"GroupNorm groups; set num_groups to a divisor")
        super().__init__(num_groups, channels, eps=1e-5)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x) if self.act else x


def projection(in_chs: int, out_chs: int, stride: int, eps: float,
               num_groups: int | None = None) -> nn.Sequential:
    """The projection shortcut: a strided 1x1 convolution, then a GroupNorm unless pre-act."""
    layers = OrderedDict(conv=StdConv2dSame(in_chs, out_chs, 1, stride, eps))
    if num_groups is not None:
        layers["norm"] = GroupNormAct(out_chs, num_groups, act=False)
    return nn.Sequential(layers)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions, each normalised; ReLU after the sum."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, num_groups: int = 32,
                 eps: float = 1e-8, project: bool = False) -> None:
        super().__init__()
        mid = out_chs // 4
        self.downsample = projection(in_chs, out_chs, stride, eps, num_groups) if project else None
        self.conv1 = StdConv2dSame(in_chs, mid, 1, eps=eps)
        self.norm1 = GroupNormAct(mid, num_groups)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride, eps=eps)
        self.norm2 = GroupNormAct(mid, num_groups)
        self.conv3 = StdConv2dSame(mid, out_chs, 1, eps=eps)
        self.norm3 = GroupNormAct(out_chs, num_groups, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class PreActBottleneck(nn.Module):
    """BiT's pre-activation bottleneck: norm + ReLU before each convolution, plain sum."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, num_groups: int = 32,
                 eps: float = 1e-8, project: bool = False) -> None:
        super().__init__()
        mid = out_chs // 4
        self.downsample = projection(in_chs, out_chs, stride, eps) if project else None
        self.norm1 = GroupNormAct(in_chs, num_groups)
        self.conv1 = StdConv2dSame(in_chs, mid, 1, eps=eps)
        self.norm2 = GroupNormAct(mid, num_groups)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride, eps=eps)
        self.norm3 = GroupNormAct(mid, num_groups)
        self.conv3 = StdConv2dSame(mid, out_chs, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_pre)
        x = self.conv1(x_pre)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        return x + shortcut


class ResNetBackbone(nn.Module):
    """7x7/2 convolution, GroupNorm + ReLU, 3x3/2 max pool, then the stages.

    The first stage keeps the resolution and every later one halves it, so the
    total down-sampling is ``4 * 2 ** (len(layers) - 1)``. With ``preact`` the
    blocks are BiT's pre-activation bottlenecks: the stem has no norm and a
    final GroupNorm + ReLU follows the last stage.
    """

    def __init__(self, layers: Sequence[int], channels: Sequence[int] = RESNET_CHANNELS,
                 in_chans: int = 3, stem_width: int = 64, num_groups: int = 32,
                 eps: float = 1e-8, preact: bool = False) -> None:
        super().__init__()
        if not layers or len(channels) < len(layers) or min(layers) < 1:
            raise VitsslError(f"bad ResNet layout layers={tuple(layers)}, "
                              f"channels={tuple(channels)}: need one or more stages of at "
                              f"least one block and a channel count per stage")
        stem = OrderedDict(conv=StdConv2dSame(in_chans, stem_width, 7, 2, eps))
        if not preact:
            stem["norm"] = GroupNormAct(stem_width, num_groups)
        stem["pool"] = MaxPool2dSame(3, 2)
        self.stem = nn.Sequential(stem)
        block = PreActBottleneck if preact else Bottleneck
        stages, prev = [], stem_width
        for i, (depth, width) in enumerate(zip(layers, channels[:len(layers)], strict=True)):
            # The first block of a stage projects the shortcut and strides (except stage 0).
            blocks = [block(width if j else prev, width, 1 if i == 0 or j else 2, project=j == 0,
                            num_groups=num_groups, eps=eps) for j in range(depth)]
            stages.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks))))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.norm = GroupNormAct(prev, num_groups) if preact else nn.Identity()
        self.num_features = prev
        self.reduction = 4 * 2 ** (len(layers) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.stem(x)))


class HybridStem(nn.Module):
    """Images (B, C, H, W) -> ResNet feature map -> projection -> tokens (B, N, D).

    ``patch_size`` is the pixel side of one token: the backbone's down-sampling
    times the projection kernel (1x1 when they are equal, as in the paper).
    """

    def __init__(self, image_size: int | tuple[int, int] = 224, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, *,
                 layers: Sequence[int] = (3, 4, 9),
                 channels: Sequence[int] | None = None, width_factor: int = 1,
                 stem_width: int = 64, num_groups: int = 32, ws_eps: float = 1e-8,
                 preact: bool = False, zero_init_last: bool = True) -> None:
        super().__init__()
        channels = tuple(channels or (c * width_factor for c in RESNET_CHANNELS))
        self.backbone = ResNetBackbone(tuple(layers), channels, in_chans,
                                       stem_width * width_factor, num_groups, ws_eps, preact)
        reduction = self.backbone.reduction
        patch = to_pair(patch_size)
        if patch[0] != patch[1] or patch[0] % reduction:
            raise VitsslError(f"patch size {patch_size} does not fit this hybrid stem: it "
                              f"must be a multiple of its {reduction}x down-sampling "
                              f"(e.g. '/{reduction}')")
        kernel = patch[0] // reduction
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel, kernel)
        self.image_size = to_pair(image_size)
        self.patch_size = patch
        self.in_chans = in_chans
        self.reduction = reduction
        self.grid_size = self.grid_for(*self.image_size)
        self.reset_parameters(zero_init_last)

    def reset_parameters(self, zero_init_last: bool = True) -> None:
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_last:  # each v1.5 residual branch starts as the identity
            for module in self.backbone.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.norm3.weight)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The token grid produced for an input of this size."""
        return token_grid(height, width, self.patch_size, "the hybrid stem's pixels per token")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.grid_for(images.shape[-2], images.shape[-1])
        return self.proj(self.backbone(images)).flatten(2).transpose(1, 2)  # "b d h w -> b (h w) d"


LAYOUTS = {  # name -> (description, HybridStem options)
    "resnet50-hybrid": ("ResNet-50 stages (3, 4, 9), 16x down: the paper's R50+ViT-B/16 stem",
                        dict(layers=(3, 4, 9))),
    "resnet50-hybrid-s32": ("ResNet-50 stages (3, 4, 6, 3), 32x down",
                            dict(layers=(3, 4, 6, 3))),
    "resnet26-hybrid": ("ResNet-26 stages (2, 2, 2, 2), 32x down (R26+ViT-S/32)",
                        dict(layers=(2, 2, 2, 2))),
    "resnet-tiny-hybrid": ("A tiny GN/WS ResNet stem, 4x down, for 32 px images and tests",
                           dict(layers=(2,), channels=(64,), stem_width=16, num_groups=8)),
    "resnet-hybrid": ("A GN/WS ResNet hybrid stem of any layout (options: layers, channels, "
                      "width_factor, ...)", {}),
}


def _preset(name: str):
    doc, defaults = LAYOUTS[name]

    def factory(**kwargs) -> HybridStem:
        return HybridStem(**{**defaults, **kwargs})

    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = doc
    return factory


@vitssl.hookimpl
def register_stems(register):
    for name in LAYOUTS:
        register(name, _preset(name))
