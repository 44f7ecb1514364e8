"""The ConvNet's stage types (``model.block``), one stage at a time, with the same geometry.

Every block maps a stage's input (``c_in`` channels) to ``c_out`` channels and shrinks the image
as two ``kernel_size`` convs with ``padding`` would (the second with ``stride``), so the net's
feature size and its smallest input (``model.feature_hw``) do not depend on the block:

- ``plain``: conv → (BatchNorm) → ReLU, twice, as flat modules (the seed's net and its weights);
- ``residual``: :class:`ResidualStage`, ReLU(convs(x) + 1x1 projection(x));
- ``depthwise``: :class:`DepthwiseStage`, MobileNet v1: every conv but the net's first is a
  depthwise ``k x k`` (groups = channels) then a pointwise 1x1, each with BatchNorm and ReLU;
- ``inception``: :class:`InceptionStage`, GoogLeNet v1's module: 1x1; 1x1→3x3; 1x1→5x5; 3x3
  max pool→1x1, concatenated to ``c_out`` channels. Its branches keep the size ("same"
  padding), which is the plain stage's geometry at kernel 3 and padding 1, the only ones the
  config lets it take (model._checks of the config).

Does not import optuna.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

INCEPTION_MIN_WIDTH = 4  # one channel per branch at least


class GlobalAvgPool(nn.Module):
    """[N, C, H, W] → [N, C]: the mean over each channel's pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _norm(channels: int, batchnorm: bool) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels)] if batchnorm else []


def plain_layers(
    c_in: int, c_out: int, kernel: int, padding: int, stride: int, batchnorm: bool
) -> list[nn.Module]:
    """The plain stage as flat modules: (conv, BatchNorm?, ReLU) twice; the second conv strided."""
    layers: list[nn.Module] = []
    for conv_in, conv_stride in ((c_in, 1), (c_out, stride)):
        layers.append(nn.Conv2d(conv_in, c_out, kernel, padding=padding, stride=conv_stride))
        layers += _norm(c_out, batchnorm)
        layers.append(nn.ReLU(inplace=True))
    return layers


class ResidualStage(nn.Module):
    """ReLU(body(x) + projection(x)): body is the stage's two convs; the 1x1 projection sees the
    input pixels the body's outputs centre on (so any padding, kernel and stride line up)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        padding: int,
        stride: int,
        batchnorm: bool,
        out_hw: tuple[int, int],
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=padding), *_norm(c_out, batchnorm)]
        layers += [nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, kernel, padding=padding, stride=stride)]
        layers += _norm(c_out, batchnorm)
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=not batchnorm), *_norm(c_out, batchnorm))
        # body output j is centred on input pixel j*stride + shift (shift < 0: the convs pad wider
        # than they reach, so the shortcut pads its input with zeros too)
        shift = kernel - 1 - 2 * padding
        self.pad = max(0, -shift)
        self.start = shift + self.pad
        self.stride = stride
        self.out_hw = out_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = F.pad(x, (self.pad,) * 4) if self.pad else x
        (h, w), s, a = self.out_hw, self.stride, self.start
        sampled = x_in[:, :, a : a + (h - 1) * s + 1 : s, a : a + (w - 1) * s + 1 : s]
        out: torch.Tensor = F.relu(self.body(x) + self.shortcut(sampled))
        return out


def conv_bn_relu(
    c_in: int, c_out: int, kernel: int, padding: int = 0, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """conv (no bias: BatchNorm follows) → BatchNorm2d → ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=padding, stride=stride, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SeparableConv(nn.Sequential):
    """MobileNet v1's depthwise-separable conv: depthwise ``k x k`` (groups = channels), then a
    pointwise 1x1 to ``c_out`` channels, each followed by BatchNorm and ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, padding: int, stride: int) -> None:
        super().__init__(
            conv_bn_relu(c_in, c_in, kernel, padding, stride, groups=c_in),
            conv_bn_relu(c_in, c_out, 1),
        )


class DepthwiseStage(nn.Sequential):
    """Two convs as the plain stage's, each depthwise-separable; the net's very first conv (which
    sees the image's 1 or 3 channels) stays a full conv, as in MobileNet v1."""

    def __init__(self, c_in: int, c_out: int, kernel: int, padding: int, stride: int, first: bool) -> None:
        head = (
            conv_bn_relu(c_in, c_out, kernel, padding)
            if first
            else SeparableConv(c_in, c_out, kernel, padding, 1)
        )
        super().__init__(head, SeparableConv(c_out, c_out, kernel, padding, stride))


def inception_widths(c_out: int) -> tuple[int, int, int, int]:
    """Branch widths (1x1, 3x3, 5x5, pool) summing to ``c_out``: GoogLeNet 3a's 1/4, 1/2, 1/8,
    1/8, each at least one channel (ValueError below :data:`INCEPTION_MIN_WIDTH`)."""
    if c_out < INCEPTION_MIN_WIDTH:
        raise ValueError(f"an inception stage needs at least {INCEPTION_MIN_WIDTH} channels, got {c_out}")
    b1, b5, bp = max(1, c_out // 4), max(1, c_out // 8), max(1, c_out // 8)
    return b1, c_out - b1 - b5 - bp, b5, bp


class InceptionStage(nn.Module):
    """GoogLeNet v1's Inception module, its four branches concatenated to ``c_out`` channels.

    Branches: 1x1; 1x1 (3/4 of the branch) → 3x3; 1x1 (1/2 of the branch) → 5x5; 3x3 max pool
    → 1x1. Each conv is followed by ReLU (BatchNorm first with ``batchnorm``). ``stride`` 2 (the
    last stage) strides each branch's spatial step, so the stage halves the size as the plain
    stage does at kernel 3 and padding 1.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        b1, b3, b5, bp = inception_widths(c_out)
        r3, r5 = max(1, 3 * b3 // 4), max(1, b5 // 2)

        def conv(i: int, o: int, k: int, s: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(i, o, k, padding=k // 2, stride=s, bias=not batchnorm),
                *_norm(o, batchnorm),
                nn.ReLU(inplace=True),
            ]

        self.branch1 = nn.Sequential(*conv(c_in, b1, 1, stride))
        self.branch3 = nn.Sequential(*conv(c_in, r3, 1), *conv(r3, b3, 3, stride))
        self.branch5 = nn.Sequential(*conv(c_in, r5, 1), *conv(r5, b5, 5, stride))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=stride, padding=1), *conv(c_in, bp, 1))
        self.widths = (b1, b3, b5, bp)

    @property
    def branches(self) -> Sequence[nn.Module]:
        return (self.branch1, self.branch3, self.branch5, self.branch_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)
