from __future__ import annotations

import pytest
import torch

from search.model import ConvNet, InputTooSmallError, count_parameters, feature_hw, min_input_size


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
    model = ConvNet(8, 16, 32, in_shape, n_classes=7, padding=padding)
    out = model(torch.rand(3, *in_shape))
    assert out.shape == (3, 7)
    fh, fw = feature_hw(in_shape[1], in_shape[2], padding)
    assert model.flat_features == 16 * fh * fw


def test_seed_net_matches_the_notebook() -> None:
    # conv 3->48, 48->48, 48->96, 96->96 stride 2 on 32x32 without padding: 96 x 12 x 12 features
    model = ConvNet(48, 96, 256, (3, 32, 32), n_classes=10, padding=0)
    assert model.flat_features == 96 * 12 * 12
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 48, 1),
        (48, 48, 1),
        (48, 96, 1),
        (96, 96, 2),
    ]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    assert count_parameters(model) == 3_716_154


def test_min_input_size_and_error_message() -> None:
    assert min_input_size(0) == 9 and min_input_size(1) == 1
    with pytest.raises(InputTooSmallError, match="at least 9x9"):
        ConvNet(8, 16, 32, (1, 8, 8), n_classes=10, padding=0)


def test_dropout_is_off_in_eval() -> None:
    torch.manual_seed(0)
    model = ConvNet(8, 16, 32, (3, 16, 16), n_classes=10, padding=1, dropout=(0.5, 0.9)).eval()
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
