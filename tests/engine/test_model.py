from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from search.config import ConfigError, ModelConfig, load_config
from search.engine.model import (
    ConvNet,
    InputTooSmallError,
    build_convnet,
    check_input_size,
    count_parameters,
    feature_hw,
    min_input_size,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("in_shape", "padding"),
    [
        ((3, 32, 32), 0),
        ((3, 32, 32), 1),
        ((1, 28, 28), 0),
        ((1, 8, 8), 1),
        ((3, 9, 9), 0),
        ((1, 1, 1), 1),
        ((3, 40, 24), 0),
    ],
)
def test_forward_shapes_for_several_inputs(in_shape: tuple[int, int, int], padding: int) -> None:
    model = ConvNet(ModelConfig(padding=padding), (8, 16, 32), in_shape, 7)
    out = model(torch.rand(3, *in_shape))
    assert out.shape == (3, 7)
    fh, fw = feature_hw(in_shape[1], in_shape[2], padding)
    assert model.flat_features == 16 * fh * fw


class SeedNet(nn.Module):
    """The seed notebook's net as DESIGN.md describes it, written out layer by layer."""

    def __init__(self, c1: int, c2: int, l1: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, 3),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(c1, c2, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.BatchNorm1d(c2 * 12 * 12),
            nn.Linear(c2 * 12 * 12, l1),
            nn.ReLU(inplace=True),
            nn.Linear(l1, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


def test_default_net_is_the_seed_net_and_loads_its_weights() -> None:
    # the defaults with the seed's padding 0: 48/96/256 on 3x32x32, 10 classes
    model = build_convnet(ModelConfig(padding=0), 48, 96, 256, (3, 32, 32), 10)
    seed = SeedNet(48, 96, 256)
    assert [repr(m) for m in model.modules()][1:] == [repr(m) for m in seed.modules()][1:]
    assert model.flat_features == 96 * 12 * 12
    assert count_parameters(model) == count_parameters(seed) == 3_716_154
    # weights saved from today's net (same state_dict keys) load strictly and compute the same
    model.load_state_dict(seed.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), seed.eval()(x))


def test_build_convnet_passes_every_model_option() -> None:
    options = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(padding=2, dropout=(0.2, 0.3), stages=3, kernel_size=5, pool="avg", head="global_avg")
    model = build_convnet(cfg, 4, 8, 8, (3, 32, 32), 3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert options == {
        "padding",
        "dropout",
        "stages",
        "kernel_size",
        "pool",
        "head",
        "batchnorm",
        "residual",
        "block",  # tests/engine/test_blocks.py
        "arch",  # tests/engine/test_blocks.py
        "init_from",  # tests/engine/test_weights.py
    }
    assert [(c.out_channels, c.kernel_size, c.padding, c.stride) for c in convs] == [
        (4, (5, 5), (2, 2), (1, 1)),
        (4, (5, 5), (2, 2), (1, 1)),
        (8, (5, 5), (2, 2), (1, 1)),
        (8, (5, 5), (2, 2), (1, 1)),
        (16, (5, 5), (2, 2), (1, 1)),
        (16, (5, 5), (2, 2), (2, 2)),
    ]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.3]
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 3
    assert model.flat_features == 16


def test_min_input_size_and_error_message() -> None:
    assert min_input_size(0) == 9 and min_input_size(1) == 1
    # padding 1, 2x2 max pooling: stages 1-3 halve (s // 8); the last stage's stride-2 conv and
    # pool leave ((t - 1) // 2 + 1) // 2 >= 1 pixel only from t >= 3: 24 pixels
    assert min_input_size(1, stages=4, pool="max") == 24
    assert min_input_size(1, kernel_size=7) == 17  # each 7x7 conv with padding 1 takes 4 pixels
    with pytest.raises(InputTooSmallError, match="at least 9x9"):
        ConvNet(ModelConfig(padding=0), (8, 16, 32), (1, 8, 8), 10)


@pytest.mark.parametrize(
    ("options", "side", "field", "message"),
    [
        (
            {"padding": 0},
            8,
            "padding",
            "at least 9x9 pixels (got 0). Fix: use model.padding: 1, or data.image_size: 9 or more",
        ),
        (
            {"stages": 4, "pool": "max"},
            8,
            "stages",
            "at least 24x24 pixels (got 4). Fix: use model.stages: 2, or",
        ),
        (
            {"pool": "max"},
            4,
            "pool",
            "at least 6x6 pixels (got 'max'). Fix: use model.pool: none, or data.image_size: 6",
        ),
        (
            {"kernel_size": 7},
            8,
            "kernel_size",
            "at least 17x17 pixels (got 7). Fix: use model.kernel_size: 3, or",
        ),
    ],
)
def test_too_small_input_names_the_option_to_change(
    options: dict[str, object], side: int, field: str, message: str
) -> None:
    cfg = ModelConfig(**options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        check_input_size(cfg, (1, side, side))
    assert err.value.field == f"model.{field}"
    assert str(err.value).startswith(
        f"model.{field}: the {side}x{side} input images are too small for this net"
    )


COMBOS = list(
    itertools.product(
        [2, 3, 4], ["none", "max", "avg"], ["flatten", "global_avg"], [False, True], [False, True]
    )
)


@pytest.mark.parametrize(("padding", "kernel_size"), [(0, 3), (1, 3), (2, 3), (0, 5), (1, 5), (2, 5)])
def test_every_option_combination_builds_and_trains_or_names_the_minimum(
    padding: int, kernel_size: int
) -> None:
    torch.manual_seed(0)
    ran = raised = 0
    for stages, pool, head, batchnorm, residual in COMBOS:
        cfg = ModelConfig(
            padding=padding,  # type: ignore[arg-type]
            stages=stages,
            kernel_size=kernel_size,  # type: ignore[arg-type]
            pool=pool,  # type: ignore[arg-type]
            head=head,  # type: ignore[arg-type]
            batchnorm=batchnorm,
            residual=residual,
        )
        need = min_input_size(padding, stages=stages, kernel_size=kernel_size, pool=pool)
        for side in (8, 32, 96):
            shape = (3, side, side)
            if side < need:
                with pytest.raises(ConfigError, match=f"needs at least {need}x{need} pixels") as err:
                    build_convnet(cfg, 4, 8, 8, shape, 3)
                # the option the message names, changed as it says, makes the input fit
                fix = re.match(r"use model\.(\w+): (\w+),", err.value.fix)
                if fix:
                    value = fix.group(2)
                    changed = dataclasses.replace(
                        cfg, **{fix.group(1): value if fix.group(1) == "pool" else int(value)}
                    )
                    check_input_size(changed, shape)
                raised += 1
                continue
            model = build_convnet(cfg, 4, 8, 8, shape, 3)
            x = torch.rand(2, *shape)
            out = model(x)
            assert out.shape == (2, 3)
            nn.functional.cross_entropy(out, torch.tensor([0, 2])).backward()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
            ran += 1
        # the reported minimum is exact: it builds, one pixel less does not
        assert min(feature_hw(need, need, padding, stages=stages, kernel_size=kernel_size, pool=pool)) >= 1
        if need > 1:
            with pytest.raises(InputTooSmallError):
                ConvNet(cfg, (4, 8, 8), (1, need - 1, need - 1), 3)
    assert ran and (raised or padding > kernel_size // 2)  # convs that pad wider than they reach grow


def _meta_params(cfg: ModelConfig, side: int) -> int:
    with torch.device("meta"):  # counts parameters without allocating them
        return count_parameters(build_convnet(cfg, 48, 96, 256, (3, side, side), 10))


def test_global_avg_head_does_not_grow_with_the_image() -> None:
    cfg = ModelConfig(stages=4, pool="max", head="global_avg", batchnorm=True)
    counts = {side: _meta_params(cfg, side) for side in (64, 96, 128, 224)}
    assert len(set(counts.values())) == 1
    # the 128 px blow-up: today's flatten head has a Linear(96*64*64 -> 256); the global_avg
    # net's largest layer is its last 3x3 conv (384 -> 384 channels: 1.3M weights)
    flatten = _meta_params(ModelConfig(), 128)
    assert flatten > 96 * 64 * 64 * 256 > 30 * counts[128]
    assert counts[128] < 3_000_000


def test_bundled_imagefolder_config_fits_its_images() -> None:
    cfg = load_config(REPO / "study_configs" / "imagefolder.yaml")
    m = cfg.model
    assert (m.stages, m.pool, m.head, m.batchnorm, cfg.data.dataset) == (
        4,
        "max",
        "global_avg",
        True,
        "imagefolder",
    )
    assert cfg.data.image_size is not None
    for side in (64, cfg.data.image_size, 224):
        check_input_size(m, (3, side, side))


def test_imagefolder_config_runs_a_trial_on_a_folder_of_images_and_exports_it(workdir: Path) -> None:
    from PIL import Image

    from search.cli import main
    from search.results.export import load_export, predict_files
    from tests.conftest import run_cli

    root = workdir / "images"
    rng = torch.Generator().manual_seed(0)
    for label, colour in (("cats", 0), ("dogs", 2)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            pixels = torch.randint(0, 60, (64, 64, 3), generator=rng, dtype=torch.uint8)
            pixels[..., colour] += 150
            Image.fromarray(pixels.numpy()).save(root / label / f"{i}.png")
    config = str(REPO / "study_configs" / "imagefolder.yaml")
    sets = ["--set", f"data.root={root}", "--set", "search.n_trials=1", "--set", "train.epochs=1"]
    sets += ["--set", "search.space.batch_size=8"]
    assert "ok: study 'imagefolder'" in run_cli("validate", config, *sets, cwd=workdir, check=0).stdout
    run_cli("run", config, *sets, "--device", "cpu", cwd=workdir, check=0)
    assert main(["export", "imagefolder", "--out", "exported"]) == 0  # in-process: one interpreter less
    model, _, exported = load_export(workdir / "exported")
    assert exported["in_shape"] == [3, 96, 96] and exported["model"]["stages"] == 4
    assert exported["model"]["head"] == "global_avg" and exported["model"]["batchnorm"] is True
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 8
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    top = predict_files(workdir / "exported", [root / "cats" / "0.png"], k=2)[0]
    assert sorted(name for name, _ in top) == ["cats", "dogs"]


def test_dropout_is_off_in_eval() -> None:
    torch.manual_seed(0)
    model = ConvNet(ModelConfig(padding=1, dropout=(0.5, 0.9)), (8, 16, 32), (3, 16, 16), 10).eval()
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_first_conv_is_the_input_conv_with_residual_stages() -> None:
    model = build_convnet(ModelConfig(residual=True, batchnorm=True), 4, 8, 8, (1, 8, 8), 3)
    assert model.first_conv.in_channels == 1 and model.first_conv.out_channels == 4


@pytest.mark.parametrize("batchnorm", [False, True])
def test_max_pooling_before_the_last_relu_is_the_same_function(batchnorm: bool) -> None:
    """Max pooling runs before a plain stage's last ReLU (cheaper): the same outputs and gradients
    as ReLU then pooling, bit for bit, and the same weights' names."""
    cfg = ModelConfig(padding=1, pool="max", batchnorm=batchnorm, dropout=(0.0, 0.0))
    ours = build_convnet(cfg, 4, 8, 16, (3, 16, 16), 5)
    kinds = [type(m).__name__ for m in ours.features]
    assert kinds[kinds.index("MaxPool2d") + 1] == "ReLU"
    usual = build_convnet(cfg, 4, 8, 16, (3, 16, 16), 5)
    layers = list(usual.features)
    for i in [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]:
        layers[i], layers[i + 1] = layers[i + 1], layers[i]  # the usual order: ReLU, then pooling
    usual.features = nn.Sequential(*layers)
    assert list(usual.state_dict()) == list(ours.state_dict())
    usual.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 16, 16)
    y = torch.arange(6) % 5
    outs = []
    for net in (ours, usual):
        out = net.train()(x)
        torch.nn.functional.cross_entropy(out, y).backward()  # type: ignore[no-untyped-call]
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1])
    for (name, a), b in zip(ours.named_parameters(), usual.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None and torch.equal(a.grad, b.grad), name
