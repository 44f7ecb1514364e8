"""The architecture families: plain, residual, depthwise and inception blocks, and ResNet-18."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from torch import nn

from search.config import ConfigError, ModelConfig, check_inputs, config_from_dict
from search.engine.arch import SMALL_INPUT, TORCHVISION, build_model, family
from search.engine.blocks import DepthwiseStage, InceptionStage
from search.engine.model import count_parameters, min_input_size

BLOCKS = ("plain", "residual", "depthwise", "inception")
SIDES = (8, 32, 96)


def _step(model: nn.Module, side: int, channels: int = 3) -> None:
    """One training step on a batch of 2: finite gradients on every parameter."""
    out = model(torch.rand(2, channels, side, side))
    assert out.shape == (2, 3)
    nn.functional.cross_entropy(out, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("block", BLOCKS)
def test_every_block_stages_pool_head_builds_and_trains_or_names_the_minimum(block: str) -> None:
    torch.manual_seed(0)
    ran = refused = 0
    for stages, pool, head in itertools.product((2, 3, 4), ("none", "max", "avg"), ("flatten", "global_avg")):
        cfg = ModelConfig(block=block, stages=stages, pool=pool, head=head, batchnorm=True)  # type: ignore[arg-type]
        need = min_input_size(cfg.padding, stages=stages, kernel_size=cfg.kernel_size, pool=pool)
        for side in SIDES:
            if side < need:
                with pytest.raises(ConfigError, match=f"needs at least {need}x{need} pixels"):
                    build_model(cfg, 4, 8, 8, (3, side, side), 3)
                refused += 1
                continue
            model = build_model(cfg, 4, 8, 8, (3, side, side), 3)
            assert family(cfg) == f"convnet/{block}"
            _step(model, side)
            ran += 1
    assert ran and refused  # 4 stages with pooling need 24 px: 8 px is refused


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"block": "depthwise"}, "model.batchnorm", "block: depthwise is MobileNet v1's depthwise-separable"),
        (
            {"block": "inception", "kernel_size": 5},
            "model.kernel_size",
            "block: inception has its own kernels",
        ),
        ({"block": "inception", "padding": 0}, "model.padding", "keep the image size"),
        ({"block": "depthwise", "residual": True}, "model.block", "contradicts residual: true"),
        ({"block": "plain", "residual": True}, "model.block", "contradicts residual: true"),
    ],
)
def test_options_a_block_cannot_take_are_refused_with_why(
    options: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict({"model": {"batchnorm": options.get("block") != "depthwise", **options}})
    assert err.value.field == field


def test_residual_true_means_block_residual_and_builds_the_same_net() -> None:
    assert ModelConfig(residual=True).block == "residual"
    cfg = config_from_dict({"model": {"residual": True}}).model
    assert (cfg.block, cfg.residual) == ("residual", True)
    torch.manual_seed(0)
    old = build_model(cfg, 4, 8, 8, (3, 16, 16), 3)
    torch.manual_seed(0)
    new = build_model(ModelConfig(block="residual"), 4, 8, 8, (3, 16, 16), 3)
    assert [(k, v.shape) for k, v in old.state_dict().items()] == [
        (k, v.shape) for k, v in new.state_dict().items()
    ]


def test_depthwise_convs_are_depthwise_then_pointwise_except_the_first() -> None:
    model = build_model(ModelConfig(block="depthwise", batchnorm=True, stages=3), 4, 8, 8, (3, 32, 32), 3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(isinstance(m, DepthwiseStage) for m in model.modules()) == 3
    assert tuple(convs[0].weight.shape) == (4, 3, 3, 3) and convs[0].groups == 1  # the image's conv: full
    rest = convs[1:]
    assert len(rest) == 2 * 5  # five separable convs (3 stages x 2, less the first), two convs each
    for depthwise, pointwise in zip(rest[::2], rest[1::2], strict=True):
        c = depthwise.in_channels
        assert tuple(depthwise.weight.shape) == (c, 1, 3, 3) and depthwise.groups == c
        assert pointwise.kernel_size == (1, 1) and pointwise.in_channels == c
    bns = [m for m in model.features.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs)  # BatchNorm after every conv
    # fewer parameters than the plain net of the same widths
    plain = build_model(ModelConfig(batchnorm=True, stages=3), 4, 8, 8, (3, 32, 32), 3)
    assert count_parameters(model.features) < count_parameters(plain.features)


def test_inception_concatenates_four_branches_to_the_stage_width() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(block="inception", batchnorm=True), 8, 16, 8, (3, 32, 32), 3).eval()
    stages = [m for m in model.modules() if isinstance(m, InceptionStage)]
    assert [sum(s.widths) for s in stages] == [8, 16]
    stage = stages[1]
    outs: list[torch.Tensor] = []
    for branch in stage.branches:
        branch.register_forward_hook(lambda _m, _i, o: outs.append(o))
    kernels = {m.kernel_size for b in stage.branches for m in b.modules() if isinstance(m, nn.Conv2d)}
    assert kernels == {(1, 1), (3, 3), (5, 5)}
    assert any(isinstance(m, nn.MaxPool2d) for m in stage.branch_pool.modules())
    seen: list[torch.Tensor] = []
    stage.register_forward_hook(lambda _m, _i, o: seen.append(o))
    model(torch.rand(2, 3, 32, 32))
    assert len(outs) == 4 and [o.shape[1] for o in outs] == list(stage.widths)
    assert torch.equal(seen[0], torch.cat(outs, dim=1))  # the stage's output is the four, concatenated
    assert seen[0].shape[2:] == (16, 16)  # the last stage strides every branch: 32 -> 16


def test_inception_needs_four_channels_per_stage() -> None:
    space = {"c1": {"choices": [2, 8]}, "model.block": {"choices": ["plain", "inception"]}}
    with pytest.raises(ConfigError, match="an inception stage needs at least 4 channels") as err:
        config_from_dict({"search": {"space": space}})
    assert err.value.field == "search.space.model.block"


@pytest.mark.parametrize(("channels", "side"), [(3, 32), (1, 8), (3, 96)])
def test_resnet18_is_torchvisions_with_the_small_input_stem_for_small_images(
    channels: int, side: int
) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18")
    model = build_model(cfg, 1, 1, 1, (channels, side, side), 3)
    assert isinstance(model, torchvision.models.ResNet) and family(cfg) == "resnet18"
    if side <= SMALL_INPUT:
        assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
        assert isinstance(model.maxpool, nn.Identity)
    else:
        assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2))
        assert isinstance(model.maxpool, nn.MaxPool2d)
    assert model.conv1.in_channels == channels and model.fc.out_features == 3
    reference = torchvision.models.resnet18(weights=None, num_classes=3)
    stem = {k for k in reference.state_dict() if k.startswith("conv1.")}
    same = {k: v.shape for k, v in model.state_dict().items() if k not in stem}
    assert same == {k: v.shape for k, v in reference.state_dict().items() if k not in stem}
    _step(model, side, channels)


def test_resnet18_with_its_widths_searched_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.arch resnet18 has its own widths and blocks and ignores c1"
    ) as err:
        config_from_dict({"model": {"arch": "resnet18"}})
    assert err.value.field == "search.space.c1"
    fixed = {"c1": 16, "c2": 32, "l1": 64}
    with pytest.raises(ConfigError, match=r"ignores model\.block") as err:
        config_from_dict(
            {
                "model": {"arch": "resnet18"},
                "search": {"space": {**fixed, "model.block": {"choices": ["plain", "residual"]}}},
            }
        )
    with pytest.raises(ConfigError, match=r"ignores model\.stages"):  # the user's config (validate, run)
        check_inputs(
            config_from_dict({"model": {"arch": "resnet18", "stages": 3}, "search": {"space": fixed}})
        )
    assert (
        config_from_dict({"model": {"arch": "resnet18"}, "search": {"space": fixed}}).model.arch == "resnet18"
    )


def test_every_torchvision_arch_is_a_config_choice() -> None:
    import typing

    from search.config._types import ArchName

    assert set(typing.get_args(ArchName)) == {"convnet", *TORCHVISION}


@pytest.mark.parametrize("block", ["plain", "residual", "depthwise"])
@pytest.mark.parametrize(("kernel_size", "padding"), [(1, 0), (5, 2), (7, 1)])
def test_kernel_size_padding_and_dropout_combine_with_every_block_but_inception(
    block: str, kernel_size: int, padding: int
) -> None:
    cfg = ModelConfig(
        block=block,  # type: ignore[arg-type]
        kernel_size=kernel_size,  # type: ignore[arg-type]
        padding=padding,  # type: ignore[arg-type]
        batchnorm=True,
        dropout=(0.2, 0.4),
    )
    model = build_model(cfg, 4, 8, 8, (3, 32, 32), 3)
    assert {
        m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
    } <= {(kernel_size, kernel_size)}
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.4]
    _step(model, 32)
