"""The one factory of a trial's net: ``model.arch`` convnet (:mod:`search.engine.model`) or a
torchvision classifier from :data:`TORCHVISION`, built from scratch (``weights=None``: nothing is
downloaded).

A torchvision classifier takes the images' channels (1 for digits/MNIST: its first conv is
rebuilt for them) and, for small images (sides up to :data:`SMALL_INPUT` px), the small-input
stem the CIFAR-10 tutorials use: a 3x3 stride-1 first conv and no max pool, so a 32x32 image
reaches the last stage at 4x4 instead of 1x1. It reads none of the ConvNet's options or widths
(the config refuses a space that searches them with such an arch fixed; with ``model.arch``
searched its trials record them as unused). Adding another torchvision classifier is one entry
in :data:`TORCHVISION` (and its name in the config's ``ArchName``). Does not import optuna.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from search.config import ModelConfig
from search.engine.model import build_convnet

SMALL_INPUT = 64  # images with both sides up to this many pixels get the small-input stem


def _resnet_stem(net: nn.Module, channels: int, small: bool) -> None:
    """ResNet's ``conv1`` for ``channels`` input channels; small images: 3x3 stride 1, no max pool."""
    conv1 = net.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    width = conv1.out_channels
    if small:
        net.conv1 = nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != conv1.in_channels:
        net.conv1 = nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False)


@dataclass(frozen=True)
class TorchvisionArch:
    """A torchvision classifier: its constructor (``weights=None, num_classes=n``) and how its
    stem is adapted to the images' channels and size."""

    name: str  # its constructor in torchvision.models (imported when a trial builds it: ~3 s)
    stem: Callable[[nn.Module, int, bool], None]
    title: str  # how a model card names it

    def build(self, n_classes: int) -> nn.Module:
        """The classifier from scratch: ``weights=None`` (nothing downloaded), ``n_classes`` outputs."""
        models = importlib.import_module("torchvision.models")
        net: nn.Module = getattr(models, self.name)(weights=None, num_classes=n_classes)
        return net


TORCHVISION: dict[str, TorchvisionArch] = {
    "resnet18": TorchvisionArch("resnet18", _resnet_stem, "ResNet-18 (torchvision)"),
}


def is_small(in_shape: Sequence[int]) -> bool:
    """Whether images of ``in_shape`` (C, H, W) get a torchvision classifier's small-input stem."""
    return max(int(in_shape[1]), int(in_shape[2])) <= SMALL_INPUT


def build_model(
    model: ModelConfig, c1: int, c2: int, l1: int, in_shape: Sequence[int], n_classes: int
) -> nn.Module:
    """The net of a trial with model settings ``model`` and widths c1, c2, l1 (unused by a
    torchvision arch) on images of ``in_shape`` (C, H, W) with ``n_classes`` classes.

    Raises:
        ConfigError: the images are too small for the ConvNet of ``model`` (naming the option).
    """
    if model.arch == "convnet":
        return build_convnet(model, c1, c2, l1, in_shape, n_classes)
    arch = TORCHVISION[model.arch]
    net = arch.build(n_classes)
    arch.stem(net, int(in_shape[0]), is_small(in_shape))
    return net


def family(model: ModelConfig) -> str:
    """The net's family as a trial records it and a model card shows it: ``convnet/<block>`` or the arch."""
    return f"convnet/{model.block}" if model.arch == "convnet" else model.arch


def family_title(model: ModelConfig, in_shape: Sequence[int]) -> str:
    """A model card's words for the family, e.g. ``ResNet-18 (torchvision), small-input stem``."""
    if model.arch == "convnet":
        return f"ConvNet, {model.block} blocks"
    stem = "small-input stem (3x3 stride 1, no max pool)" if is_small(in_shape) else "ImageNet stem"
    return f"{TORCHVISION[model.arch].title}, {stem}"


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The conv that sees the input pixels (its weights are the first-layer filters)."""
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))
