"""The seed study's ConvNet, with its widths and padding as parameters.

conv(in→c1) → conv(c1→c1) → dropout → conv(c1→c2) → conv(c2→c2, stride 2) → dropout →
flatten → BatchNorm1d → Linear(→l1) → Linear(→n_classes), ReLU between. Padding 0 is the seed's
net exactly. The flatten size is computed from the input shape. Dropout is a module, so it is off
in ``eval()`` (the seed applied functional dropout at evaluation time). Does not import optuna.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

KERNEL = 3


def _conv_out(size: int, padding: int, stride: int) -> int:
    return (size + 2 * padding - KERNEL) // stride + 1


def feature_hw(height: int, width: int, padding: int) -> tuple[int, int]:
    """Spatial size after the four convolutions (zero or negative means the input is too small)."""
    sizes = [height, width]
    for stride in (1, 1, 1, 2):
        sizes = [_conv_out(s, padding, stride) if s >= KERNEL - 2 * padding else 0 for s in sizes]
    return sizes[0], sizes[1]


def min_input_size(padding: int) -> int:
    """The smallest square input (pixels per side) that the net accepts with this padding."""
    size = 1
    while min(feature_hw(size, size, padding)) < 1:
        size += 1
    return size


class InputTooSmallError(ValueError):
    """The input images are smaller than the net's minimum for its padding."""


class ConvNet(nn.Module):
    """The seed's ConvNet; ``in_shape`` is (channels, height, width)."""

    def __init__(
        self,
        c1: int,
        c2: int,
        l1: int,
        in_shape: Sequence[int],
        n_classes: int,
        padding: int = 0,
        dropout: Sequence[float] = (0.1, 0.5),
    ) -> None:
        super().__init__()
        channels, height, width = (int(v) for v in in_shape)
        fh, fw = feature_hw(height, width, padding)
        if fh < 1 or fw < 1:
            need = min_input_size(padding)
            raise InputTooSmallError(
                f"input {height}x{width} is too small for padding={padding}: "
                f"the net needs at least {need}x{need} pixels"
            )
        self.in_shape = (channels, height, width)
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, KERNEL, padding=padding),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, KERNEL, padding=padding),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout[0]),
            nn.Conv2d(c1, c2, KERNEL, padding=padding),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, KERNEL, padding=padding, stride=2),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout[1]),
        )
        self.flat_features = c2 * fh * fw
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.BatchNorm1d(self.flat_features),
            nn.Linear(self.flat_features, l1),
            nn.ReLU(inplace=True),
            nn.Linear(l1, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out

    @property
    def first_conv(self) -> nn.Conv2d:
        conv = self.features[0]
        assert isinstance(conv, nn.Conv2d)
        return conv


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
