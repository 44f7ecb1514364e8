"""The study's ConvNet: the seed's net by default, in stages of two convs each.

Stage i has two ``kernel_size`` convs (ReLU after each, BatchNorm2d before the ReLU with
``batchnorm``), then optional 2x2 pooling, then dropout: ``dropout[0]`` after every stage but the
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
one place a study's net is built from its ``ModelConfig``. Does not import optuna.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from search.config import ConfigError, ModelConfig
from search.engine.blocks import (
    DepthwiseStage,
    GlobalAvgPool,
    InceptionStage,
    ResidualStage,
    plain_layers,
)
from search.errors import InputError

KERNEL = 3
MAX_SIDE = 1 << 16  # min_input_size looks no further


def _conv_out(size: int, kernel: int, padding: int, stride: int) -> int:
    """Output size of one conv; 0 when the input is smaller than the (padded) kernel."""
    if size < 1 or size + 2 * padding < kernel:
        return 0
    return (size + 2 * padding - kernel) // stride + 1


def _stage_out(size: int, kernel: int, padding: int, last: bool, pool: str) -> int:
    size = _conv_out(_conv_out(size, kernel, padding, 1), kernel, padding, 2 if last else 1)
    return size // 2 if pool != "none" else size


def feature_hw(
    height: int,
    width: int,
    padding: int,
    *,
    stages: int = 2,
    kernel_size: int = KERNEL,
    pool: str = "none",
) -> tuple[int, int]:
    """Spatial size after all stages (zero means the input is too small)."""
    sizes = [height, width]
    for i in range(stages):
        sizes = [_stage_out(s, kernel_size, padding, i == stages - 1, pool) for s in sizes]
    return sizes[0], sizes[1]


def min_input_size(padding: int, *, stages: int = 2, kernel_size: int = KERNEL, pool: str = "none") -> int:
    """The smallest square input (pixels per side) that the net accepts with these options."""
    size = 1
    while min(feature_hw(size, size, padding, stages=stages, kernel_size=kernel_size, pool=pool)) < 1:
        size += 1
        if size > MAX_SIDE:
            raise ValueError(f"no input up to {MAX_SIDE} px fits this net")
    return size


def _fits(model: ModelConfig, height: int, width: int) -> bool:
    hw = feature_hw(
        height, width, model.padding, stages=model.stages, kernel_size=model.kernel_size, pool=model.pool
    )
    return min(hw) >= 1


def _first_fit(model: ModelConfig, height: int, width: int, field: str, values: Sequence[Any]) -> Any:
    """The first of ``values`` for ``field`` with which the input fits (None if none does)."""
    for value in values:
        if value != getattr(model, field) and _fits(
            dataclasses.replace(model, **{field: value}), height, width
        ):
            return value
    return None


def check_input_size(model: ModelConfig, in_shape: Sequence[int]) -> None:
    """ConfigError when images of ``in_shape`` (C, H, W) are too small for the net of ``model``.

    It names the option to change: the first of stages, pool, padding, kernel_size whose change
    alone makes the input fit (padding when none does), and the minimum image size."""
    _, h, w = (int(v) for v in in_shape)
    if _fits(model, h, w):
        return
    need = min_input_size(model.padding, stages=model.stages, kernel_size=model.kernel_size, pool=model.pool)
    candidates: list[tuple[str, Sequence[Any]]] = [
        ("stages", range(model.stages - 1, 1, -1)),
        ("pool", ["none"]),
        ("padding", [p for p in (1, 2) if p > model.padding]),
        ("kernel_size", [k for k in (5, 3, 1) if k < model.kernel_size]),
    ]
    field, hint = "padding", ""
    for name, values in candidates:
        value = _first_fit(model, h, w, name, values)
        if value is not None:
            field, hint = name, f"use model.{name}: {value}, or "
            break
    raise ConfigError(
        f"model.{field}",
        getattr(model, field),
        f"the {h}x{w} input images are too small for this net: the net needs at least {need}x{need} pixels",
        f"{hint}data.image_size: {need} or more",
    )


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
            nn.Flatten() if cfg.head == "flatten" else GlobalAvgPool(),
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
            _conv_out(_conv_out(hw[0], k, pad, 1), k, pad, stride),
            _conv_out(_conv_out(hw[1], k, pad, 1), k, pad, stride),
        )
        if cfg.block == "residual":
            layers.append(ResidualStage(c_in, c_out, k, pad, stride, cfg.batchnorm, hw))
        elif cfg.block == "depthwise":
            layers.append(DepthwiseStage(c_in, c_out, k, pad, stride, first=i == 0))
        elif cfg.block == "inception":
            layers.append(InceptionStage(c_in, c_out, stride, cfg.batchnorm))
        else:
            layers += plain_layers(c_in, c_out, k, pad, stride, cfg.batchnorm)
        if cfg.pool != "none":
            layers.append(nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2))
            hw = (hw[0] // 2, hw[1] // 2)
        layers.append(nn.Dropout(cfg.dropout[1] if last else cfg.dropout[0]))
        c_in = c_out
    return layers, hw


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
