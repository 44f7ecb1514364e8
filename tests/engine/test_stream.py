"""Data larger than the device's budget: batches streamed from the memory-mapped cache train the
same weights as the resident set (same images, same order), and the choice is logged."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
import torch

from search.config import DataConfig, ModelConfig, TrainConfig
from search.engine.augment import BatchTransform, channel_stats
from search.engine.data import load_splits
from search.engine.model import ConvNet
from search.engine.stream import place
from search.engine.train import fit
from tests.conftest import run_cli, tiny_config, write_config
from tests.photos import make_photos


def test_streamed_batches_train_the_resident_weights_on_cpu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_photos(tmp_path / "imgs", classes=2, per_class=16)
    cfg = DataConfig(dataset="imagefolder", root=str(root), cache_dir=str(tmp_path / "c"), image_size=12)
    splits = load_splits(cfg, seed=0)
    transform = BatchTransform(*channel_stats(splits.train.base, index=splits.train.index))
    weights = []
    for fraction, streamed in ((1.0, False), (1e-15, True)):  # a tiny budget: "too big for the device"
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="search.engine.stream"):
            train, val = place(splits.train, splits.val, torch.device("cpu"), fraction)
        assert ("streaming batches" in caplog.text) is streamed
        assert (train.stream_to is not None) is streamed and train.base is splits.train.base  # no copy
        torch.manual_seed(0)
        model = ConvNet(ModelConfig(padding=1), (4, 8, 16), splits.in_shape, splits.n_classes)
        tc = TrainConfig(epochs=2, patience=2)
        fit(model, train, val, lr=3e-3, batch_size=8, cfg=tc, transform=transform, seed=3)
        weights.append(model.state_dict())
    resident, streamed_w = weights
    assert resident.keys() == streamed_w.keys()
    assert all(torch.equal(resident[k], streamed_w[k]) for k in resident)


def test_a_run_too_big_for_its_budget_streams_and_scores_the_same(workdir: Path) -> None:
    cfg = tiny_config(search={**tiny_config()["search"], "n_trials": 1}, train={"epochs": 1, "patience": 1})
    write_config(workdir / "c.yaml", cfg)
    resident = run_cli("run", "c.yaml", "--device", "cpu", cwd=workdir, check=0)
    assert "resident on cpu" in resident.stderr
    cfg["name"] = "streamed"
    cfg["data"] = {**cfg["data"], "device_budget": 1e-15}
    write_config(workdir / "s.yaml", cfg)
    streamed = run_cli("run", "s.yaml", "--device", "cpu", cwd=workdir, check=0)
    assert "streaming batches from the memory-mapped cache" in streamed.stderr
    url = f"sqlite:///{workdir / 'storage' / 'studies.db'}"
    values = [optuna.load_study(study_name=n, storage=url).trials[0].value for n in ("tiny", "streamed")]
    assert values[0] is not None and values[0] == values[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streamed_batches_reach_the_gpu_as_the_resident_ones(tmp_path: Path) -> None:
    """Pinned buffers used in turn while copies run: every batch still holds its own images."""
    root = make_photos(tmp_path / "imgs", classes=2, per_class=16)
    cfg = DataConfig(dataset="imagefolder", root=str(root), cache_dir=str(tmp_path / "c"), image_size=12)
    splits = load_splits(cfg, seed=0)
    cuda = torch.device("cuda")
    resident, _ = place(splits.train, splits.val, cuda, 1.0)
    streamed, _ = place(splits.train, splits.val, cuda, 1e-15)
    assert resident.stream_to is None and streamed.stream_to == cuda
    perm = torch.randperm(len(resident), device=cuda)
    got = [streamed.batch(perm[i : i + 4].cpu()) for i in range(0, len(perm) - 3, 4)]  # all in flight
    want = [resident.batch(perm[i : i + 4]) for i in range(0, len(perm) - 3, 4)]
    assert all(g.device.type == "cuda" and torch.equal(g, w) for g, w in zip(got, want, strict=True))
