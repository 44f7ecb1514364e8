"""A model's forward latency: the figure ``search.constraints.max_latency_ms`` is checked against."""

from __future__ import annotations

import math

import torch

from search.config import ModelConfig
from search.engine.evaluate import forward_latency_ms
from search.engine.model import ConvNet


def test_forward_latency_is_a_positive_median_and_leaves_the_model_and_rng_as_they_were() -> None:
    torch.manual_seed(0)
    model = ConvNet(ModelConfig(padding=1), (4, 8, 16), (1, 8, 8), 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ms = forward_latency_ms(model, (1, 8, 8), torch.device("cpu"), warmup=1, repeats=3)
    assert math.isfinite(ms) and ms > 0
    assert model.training  # back in training mode
    assert torch.equal(torch.get_rng_state(), rng)  # no random numbers drawn: training's seed holds
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.eval()
    forward_latency_ms(model, (1, 8, 8), torch.device("cpu"), warmup=0, repeats=1)
    assert not model.training  # a model in eval mode stays so
