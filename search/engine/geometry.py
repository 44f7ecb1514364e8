"""The net's geometry without torch: the feature size after the stages, the smallest input a net
accepts, and :func:`check_input_size` (``search validate`` and ``search run`` both call it, so they
agree on which images are too small). :mod:`search.engine.model` builds the net itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from search.config import ConfigError, ModelConfig

KERNEL = 3
MAX_SIDE = 1 << 16  # min_input_size looks no further


def conv_out(size: int, kernel: int, padding: int, stride: int) -> int:
    """Output size of one conv; 0 when the input is smaller than the (padded) kernel."""
    if size < 1 or size + 2 * padding < kernel:
        return 0
    return (size + 2 * padding - kernel) // stride + 1


def _stage_out(size: int, kernel: int, padding: int, last: bool, pool: str) -> int:
    size = conv_out(conv_out(size, kernel, padding, 1), kernel, padding, 2 if last else 1)
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
