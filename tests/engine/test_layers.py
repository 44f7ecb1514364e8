"""The ConvNet's Dropout and Flatten (search.engine.layers): torch.nn's functions, cheaper on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search.config import ModelConfig
from search.engine.layers import Dropout, Flatten, dropout_noise
from search.engine.model import build_convnet


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.3])
def test_dropout_noise_is_torch_dropouts_noise_in_distribution(dtype: torch.dtype, p: float) -> None:
    x = torch.randn(64, 16, 20, 20).to(dtype).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    noise = dropout_noise(x, p)
    assert noise.dtype == dtype and noise.shape == x.shape and noise.stride() == x.stride()
    # the values torch.nn.Dropout multiplies by: 0 and 1 / (1 - p) rounded to the dtype
    torch_values = set(F.dropout(torch.ones(10_000, dtype=dtype), p, training=True).tolist())
    assert set(noise.reshape(-1).tolist()) == torch_values
    n = noise.numel()
    kept = int((noise != 0).sum())
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(kept - n * (1 - p)) < 5 * sd  # a binomial count within 5 standard deviations
    # independent elements: neighbours along the channels (adjacent in memory) agree as chance says
    flat = (noise != 0).permute(0, 2, 3, 1).reshape(-1).float()
    both = float((flat[:-1] * flat[1:]).mean())
    assert abs(both - (1 - p) ** 2) < 0.01


def test_dropout_draws_from_the_default_generator() -> None:
    x = torch.randn(8, 4, 6, 6)
    layer = Dropout(0.3).train()
    torch.manual_seed(5)
    a = layer(x)
    torch.manual_seed(5)
    b = layer(x)
    c = layer(x)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_dropout_gradient_is_its_noise_and_eval_is_the_identity() -> None:
    x = torch.randn(8, 4, 6, 6, requires_grad=True)
    layer = Dropout(0.5).train()
    out = layer(x)
    out.sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    # d out / d x is the noise: out = x * noise where kept, 0 elsewhere
    assert torch.equal(out, x.detach() * x.grad)
    assert set(x.grad.reshape(-1).tolist()) == {0.0, 2.0}
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_flatten_matches_torch_flatten_values_and_gradients(dtype: torch.dtype) -> None:
    base = torch.randn(4, 6, 5, 3).to(dtype)
    for memory_format in (torch.channels_last, torch.contiguous_format):
        grads = []
        outs = []
        for layer in (Flatten(), nn.Flatten()):
            x = base.clone().contiguous(memory_format=memory_format).requires_grad_(True)
            out = layer(x)
            (out * torch.arange(out.shape[1], dtype=dtype)).sum().backward()  # type: ignore[no-untyped-call]
            assert x.grad is not None
            outs.append(out.detach())
            grads.append(x.grad)
        assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
        # ours hands the gradient back in the input's memory format
        assert grads[0].is_contiguous(memory_format=memory_format)


def test_the_seed_net_trains_to_the_same_function_with_torch_layers() -> None:
    """The same net with torch.nn's Dropout/Flatten: same forward in eval; in training, the same
    weights' gradients whenever dropout is off (p 0), in channels_last as in NCHW."""
    cfg = ModelConfig(padding=0, dropout=(0.0, 0.0))
    ours = build_convnet(cfg, 8, 16, 32, (3, 32, 32), 10)
    torch_net = build_convnet(cfg, 8, 16, 32, (3, 32, 32), 10)
    torch_net.load_state_dict(ours.state_dict())
    torch_net.classifier[0] = nn.Flatten()
    for i, m in enumerate(torch_net.features):
        if isinstance(m, nn.Dropout):
            torch_net.features[i] = nn.Dropout(m.p)
    x = torch.rand(6, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.arange(6) % 10
    for net in (ours, torch_net):
        net.to(memory_format=torch.channels_last).train()
        F.cross_entropy(net(x), y).backward()  # type: ignore[no-untyped-call]
    for (name, a), b in zip(ours.named_parameters(), torch_net.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
