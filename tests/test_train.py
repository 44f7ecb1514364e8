from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.augment import BatchTransform, channel_stats
from search.config import DataConfig, SyntheticConfig, TrainConfig
from search.data import ImageSet, load_splits
from search.model import ConvNet
from search.train import EpochMetrics, evaluate, fit, resolve_device


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    splits = load_splits(DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache"))), seed=0)
    mean, std = channel_stats(splits.train.images)
    return splits, BatchTransform(mean, std)


def _model(splits) -> ConvNet:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return ConvNet(8, 16, 32, splits.in_shape, splits.n_classes, padding=1)


def test_fit_learns_and_keeps_the_best_epoch(digits) -> None:  # type: ignore[no-untyped-def]
    splits, transform = digits
    model = _model(splits)
    seen: list[EpochMetrics] = []
    result = fit(
        model,
        splits.train,
        splits.val,
        lr=3e-3,
        batch_size=64,
        cfg=TrainConfig(epochs=4, patience=4),
        transform=transform,
        on_epoch=lambda e, m: seen.append(m),
    )
    assert result.epochs_run == 4 and [m.epoch for m in seen] == [1, 2, 3, 4]
    best = max(seen, key=lambda m: m.val_acc)
    assert result.best_val_acc == pytest.approx(best.val_acc)
    assert result.best_val_acc > 0.8
    # the model ends holding the best epoch's weights: re-evaluating gives the best accuracy
    _, acc = evaluate(model, splits.val, transform)
    assert acc == pytest.approx(result.best_val_acc)
    assert result.best_state is not None and all(t.device.type == "cpu" for t in result.best_state.values())
    assert result.images_per_s > 0 and result.stop_reason == "completed"


def test_early_stopping_patience(digits) -> None:  # type: ignore[no-untyped-def]
    splits, transform = digits
    # lr so small that validation accuracy barely moves; min_delta makes every epoch "no gain"
    result = fit(
        _model(splits),
        splits.train,
        splits.val,
        lr=1e-7,
        batch_size=256,
        cfg=TrainConfig(epochs=10, patience=2, min_delta=0.5),
        transform=transform,
    )
    assert result.epochs_run == 3  # epoch 1 sets the best, 2 and 3 bring no gain
    assert result.best_epoch == 1
    assert result.stop_reason == "early_stopping at epoch 3"


def test_nan_loss_stops_with_a_reason(digits) -> None:  # type: ignore[no-untyped-def]
    splits, transform = digits
    result = fit(
        _model(splits),
        splits.train,
        splits.val,
        lr=1e6,
        batch_size=64,
        cfg=TrainConfig(epochs=5, patience=5),
        transform=transform,
    )
    assert result.failed
    assert result.stop_reason.startswith("nan_loss at epoch") and "lr=1e+06" in result.stop_reason


def test_on_epoch_can_stop_the_run(digits) -> None:  # type: ignore[no-untyped-def]
    splits, transform = digits

    class Stop(Exception):
        pass

    def stop_at_2(epoch: int, _m: EpochMetrics) -> None:
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(
            _model(splits),
            splits.train,
            splits.val,
            lr=1e-3,
            batch_size=128,
            cfg=TrainConfig(epochs=5),
            transform=transform,
            on_epoch=stop_at_2,
        )


def test_fit_is_reproducible_with_a_seed(digits) -> None:  # type: ignore[no-untyped-def]
    splits, transform = digits
    runs = [
        fit(
            _model(splits),
            splits.train,
            splits.val,
            lr=1e-3,
            batch_size=128,
            seed=5,
            cfg=TrainConfig(epochs=2),
            transform=transform,
        ).history
        for _ in range(2)
    ]
    assert [m.val_acc for m in runs[0]] == [m.val_acc for m in runs[1]]


def test_augmented_training_on_synthetic_rgb(tmp_path: Path) -> None:
    from search.augment import AugmentSpec

    cfg = DataConfig(
        dataset="synthetic",
        cache_dir=str(tmp_path),
        synthetic=SyntheticConfig(shape=(3, 16, 16), n_classes=4, n_samples=240),
    )
    splits = load_splits(cfg, seed=0)
    transform = BatchTransform(
        [0.5] * 3,
        [0.5] * 3,
        AugmentSpec(hflip=True, crop_pad=1, rotate_deg=10, color_jitter=0.1, hue=0.05),
        channels_last=True,
    )
    model = ConvNet(8, 16, 32, splits.in_shape, splits.n_classes, padding=0)
    result = fit(
        model,
        splits.train,
        splits.val,
        lr=3e-3,
        batch_size=32,
        cfg=TrainConfig(epochs=6, patience=6),
        transform=transform,
    )
    assert result.best_val_acc > 0.5  # 4 learnable classes: well above chance


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_evaluate_covers_the_whole_set(digits) -> None:  # type: ignore[no-untyped-def]
    splits, transform = digits
    model = _model(splits)
    small = ImageSet(splits.val.images[:37], splits.val.labels[:37])
    _, acc = evaluate(model, small, transform, batch_size=10)  # 4 batches, the last one partial
    logits = model.eval()(transform(small.images, train=False))
    assert acc == pytest.approx((logits.argmax(1) == small.labels).float().mean().item())
