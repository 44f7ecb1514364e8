"""The study's ConvNet: the seed's net by default, in stages of two convs each.

Stage i has two ``kernel_size`` convs (ReLU after each, BatchNorm2d before the ReLU with
``batchnorm``), then optional 2x2 pooling (max pooling computed before the last ReLU: the same
function, cheaper), then dropout: ``dropout[0]`` after every stage but the
last, ``dropout[1]`` after the last. The last stage's second conv has stride 2. Widths are c1, c2,
then doubling (c2·2, c2·4, …). ``block`` picks what a stage is (:mod:`search.engine.blocks`):
plain convs; residual (ReLU(convs(x) + 1x1 projection(x)), the shortcut sampled at the pixels the
convs centre on); depthwise-separable (MobileNet v1); an Inception module (GoogLeNet v1). Every
block has the plain stage's geometry, so sizes and minimum inputs are the same for all. The
head is flatten (or global average pooling with ``head="global_avg"``) → BatchNorm1d →
Linear(→l1) → ReLU → Linear(→n_classes).

The defaults with padding 0 are the seed's net exactly, with today's module names (old weights
load). Feature sizes are computed from the input shape. Dropout is a module, so it is off in
``eval()`` (the seed applied functional dropout at evaluation time). :func:`build_convnet` is the
one place a study's net is built from its ``ModelConfig``. Its dropout and flatten are
:mod:`search.engine.layers`' (``torch.nn``'s, cheaper on the CPU). Does not import optuna.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from search.config import ModelConfig
from search.engine.blocks import (
    DepthwiseStage,
    GlobalAvgPool,
    InceptionStage,
    ResidualStage,
    plain_layers,
)
from search.engine.geometry import (
    KERNEL,
    MAX_SIDE,
    check_input_size,
    conv_out,
    feature_hw,
    min_input_size,
)
from search.engine.layers import Dropout, Flatten
from search.errors import InputError

# the net's geometry lives in geometry (torch-free, for `search validate`): re-exported
__all__ = ["KERNEL", "MAX_SIDE", "check_input_size", "feature_hw", "min_input_size"]


class InputTooSmallError(InputError):
    """The input images are smaller than the net's minimum for its options."""


class Widths(NamedTuple):
    """The searched widths of a net: the first two stages' channels and the hidden layer's units."""

    c1: int
    c2: int
    l1: int


class ConvNet(nn.Module):
    """The study's ConvNet (see the module docstring): its config section ``cfg`` whole, the
    searched ``widths`` and what the data says, ``in_shape`` (channels, height, width) and
    ``n_classes``. InputTooSmallError when the images are too small for ``cfg``."""

    def __init__(
        self, cfg: ModelConfig, widths: Sequence[int], in_shape: Sequence[int], n_classes: int
    ) -> None:
        super().__init__()
        c1, c2, l1 = (int(v) for v in widths)
        channels, height, width = (int(v) for v in in_shape)
        fh, fw = feature_hw(
            height, width, cfg.padding, stages=cfg.stages, kernel_size=cfg.kernel_size, pool=cfg.pool
        )
        if fh < 1 or fw < 1:
            need = min_input_size(cfg.padding, stages=cfg.stages, kernel_size=cfg.kernel_size, pool=cfg.pool)
            raise InputTooSmallError(
                f"input {height}x{width} is too small for padding={cfg.padding}, stages={cfg.stages}, "
                f"kernel_size={cfg.kernel_size}, pool={cfg.pool}: the net needs at least {need}x{need} pixels"
            )
        self.in_shape = (channels, height, width)
        stage_widths = [c1, c2] + [c2 * 2**i for i in range(1, cfg.stages - 1)]
        layers, hw = _feature_layers(cfg, channels, stage_widths, (height, width))
        assert hw == (fh, fw)
        self.features = nn.Sequential(*layers)
        c_last = stage_widths[-1]
        self.flat_features = c_last * fh * fw if cfg.head == "flatten" else c_last
        self.classifier = nn.Sequential(
            Flatten() if cfg.head == "flatten" else GlobalAvgPool(),
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
        """The conv that sees the input pixels (its weights are the first-layer filters)."""
        return next(m for m in self.features.modules() if isinstance(m, nn.Conv2d))


def _feature_layers(
    cfg: ModelConfig, channels: int, widths: Sequence[int], hw: tuple[int, int]
) -> tuple[list[nn.Module], tuple[int, int]]:
    """The stages' modules (``cfg.block``'s, see :mod:`search.engine.blocks`), in order, and the
    spatial size they leave (plain: module names as ever, so old weights load)."""
    layers: list[nn.Module] = []
    c_in, k, pad = channels, cfg.kernel_size, cfg.padding
    for i, c_out in enumerate(widths):
        last = i == cfg.stages - 1
        stride = 2 if last else 1
        hw = (
            conv_out(conv_out(hw[0], k, pad, 1), k, pad, stride),
            conv_out(conv_out(hw[1], k, pad, 1), k, pad, stride),
        )
        stage: list[nn.Module]
        if cfg.block == "residual":
            stage = [ResidualStage(c_in, c_out, k, pad, stride, cfg.batchnorm, hw)]
        elif cfg.block == "depthwise":
            stage = [DepthwiseStage(c_in, c_out, k, pad, stride, first=i == 0)]
        elif cfg.block == "inception":
            stage = [InceptionStage(c_in, c_out, stride, cfg.batchnorm)]
        else:
            stage = plain_layers(c_in, c_out, k, pad, stride, cfg.batchnorm)
        if cfg.pool != "none":
            stage = _pooled(stage, cfg.pool)
            hw = (hw[0] // 2, hw[1] // 2)
        layers += stage
        layers.append(Dropout(cfg.dropout[1] if last else cfg.dropout[0]))
        c_in = c_out
    return layers, hw


def _pooled(stage: list[nn.Module], pool: str) -> list[nn.Module]:
    """``stage`` then 2x2 pooling. Max pooling goes before a plain stage's last ReLU: the two
    commute exactly (values and gradients), and the ReLU then works on a quarter of the elements.
    Neither has parameters, so the modules' names (and the weights' keys) stay as in the other order."""
    if pool == "max" and isinstance(stage[-1], nn.ReLU):
        return [*stage[:-1], nn.MaxPool2d(2), stage[-1]]
    return [*stage, nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)]


def build_convnet(
    model: ModelConfig, c1: int, c2: int, l1: int, in_shape: Sequence[int], n_classes: int
) -> ConvNet:
    """The net a study with model settings ``model`` trains for widths c1, c2, l1: the one factory.

    ConfigError (naming the option and the minimum size) when the input is too small."""
    check_input_size(model, in_shape)
    return ConvNet(model, Widths(int(c1), int(c2), int(l1)), in_shape, n_classes)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
