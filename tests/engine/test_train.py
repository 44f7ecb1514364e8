from __future__ import annotations

import copy
import functools
import itertools
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from search.config import DataConfig, ModelConfig, SyntheticConfig, TrainConfig
from search.engine.augment import BatchTransform, channel_stats
from search.engine.data import ImageSet, load_splits
from search.engine.device import resolve_device, resolve_precision
from search.engine.inference import evaluate
from search.engine.model import ConvNet
from search.engine.train import (
    EpochMetrics,
    FitState,
    StopKind,
    StopReason,
    fit,
    set_fused,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    splits = load_splits(DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache"))), seed=0)
    mean, std = channel_stats(splits.train.images)
    return splits, BatchTransform(mean, std)


def _model(splits) -> ConvNet:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return ConvNet(ModelConfig(padding=1), (8, 16, 32), splits.in_shape, splits.n_classes)


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
    # the model ends holding the best epoch's weights: re-evaluating (in the precision it trained
    # in) gives the best accuracy
    precision = resolve_precision(TrainConfig(), splits.val.images.device)
    _, acc = evaluate(model, splits.val, transform, precision=precision)
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
    from search.engine.augment import AugmentSpec

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
    model = ConvNet(ModelConfig(padding=0), (8, 16, 32), splits.in_shape, splits.n_classes)
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


# --------------------------------------------------------------------------- typed state, resume


def _tiny_data(n: int = 96) -> tuple[ImageSet, ImageSet]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    cut = n * 2 // 3
    return ImageSet(images[:cut], labels[:cut]), ImageSet(images[cut:], labels[cut:])


def _tiny_model(c1: int = 4) -> ConvNet:
    torch.manual_seed(1)
    return ConvNet(ModelConfig(padding=1), (c1, 8, 16), (1, 8, 8), 3)  # default dropout


def test_stop_reason_text_and_kind() -> None:
    assert str(StopReason(StopKind.COMPLETED)) == "completed"
    assert str(StopReason(StopKind.EARLY_STOPPING, 3)) == "early_stopping at epoch 3"
    assert str(StopReason(StopKind.NAN_LOSS, 2, "lr=1e+06")) == "nan_loss at epoch 2, lr=1e+06"
    assert str(StopReason(StopKind.PRUNED, 4)) == "pruned at epoch 4"
    assert [k for k in StopKind if k.failed] == [StopKind.NAN_LOSS]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """With dropout and augmentation on, through a checkpoint file: bit-identical on the CPU."""
    from search.engine.augment import AugmentSpec
    from search.store.artifacts import CheckpointStore

    train, val = _tiny_data()
    transform = BatchTransform([0.5], [0.5], AugmentSpec(hflip=True, crop_pad=1))
    cfg = TrainConfig(epochs=4, patience=4, amp=False)
    store = CheckpointStore(tmp_path, "study")

    def save_epoch_2(state: FitState) -> None:
        if state.epoch == 2:
            store.save(0, state.state_dict())

    full = fit(
        _tiny_model(),
        train,
        val,
        lr=1e-2,
        batch_size=16,
        cfg=cfg,
        transform=transform,
        seed=3,
        on_checkpoint=save_epoch_2,
    )
    checkpoint = store.load(0)
    assert checkpoint is not None and checkpoint["epoch"] == 2 and checkpoint["device"] == "cpu"
    torch.manual_seed(12345)  # whatever the process's global RNG did in between
    resumed = fit(
        _tiny_model(),
        train,
        val,
        lr=1e-2,
        batch_size=16,
        cfg=cfg,
        transform=transform,
        seed=3,
        resume=checkpoint,
    )
    assert resumed.epochs_run == 4 and resumed.stop_reason == full.stop_reason
    assert [(m.train_loss, m.val_acc) for m in resumed.history] == [
        (m.train_loss, m.val_acc) for m in full.history
    ]
    assert resumed.best_state is not None and full.best_state is not None
    for key, value in full.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key


def test_a_cuda_checkpoint_resumes_on_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint written on CUDA (16-byte generator state, fused Adam) continues on the CPU."""
    train, val = _tiny_data()
    transform = BatchTransform([0.5], [0.5])
    cfg = TrainConfig(epochs=3, patience=3, amp=False)
    states: list[dict[str, Any]] = []
    fit(
        _tiny_model(),
        train,
        val,
        lr=1e-2,
        batch_size=16,
        cfg=cfg,
        transform=transform,
        seed=7,
        on_checkpoint=lambda s: states.append(copy.deepcopy(s.state_dict())),
    )
    cuda_style = states[0]
    cuda_style["device"] = "cuda"
    cuda_style["rng"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) generator state
    for group in cuda_style["optimizer"]["param_groups"]:
        group["fused"] = True
    with pytest.raises(RuntimeError):  # what used to fail the trial
        torch.Generator().set_state(cuda_style["rng"])

    runs = []
    optimizers: list[torch.optim.Optimizer] = []
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="search.engine.train"):
            runs.append(
                fit(
                    _tiny_model(),
                    train,
                    val,
                    lr=1e-2,
                    batch_size=16,
                    cfg=cfg,
                    transform=transform,
                    seed=7,
                    resume=cuda_style,
                    on_checkpoint=lambda s: optimizers.append(s.optimizer),
                )
            )
    assert optimizers and all(
        g["fused"] is False for o in optimizers for g in o.param_groups
    )  # CPU: plain Adam
    assert (
        "checkpoint written on cuda, resuming on cpu: data order re-seeded from seed 7 and epoch 1"
        in caplog.text
    )
    assert [m.epoch for m in runs[0].history] == [1, 2, 3] and runs[0].stop_reason == "completed"
    # the re-seed is deterministic
    assert [(m.train_loss, m.val_loss) for m in runs[0].history] == [
        (m.train_loss, m.val_loss) for m in runs[1].history
    ]


def test_set_fused_moves_the_step_counters() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.ones(3)
    opt.step()
    set_fused(opt, True)  # fused Adam on the CPU keeps its step on the parameter's device
    assert opt.param_groups[0]["fused"] is True
    assert opt.state[param]["step"].dtype == torch.float32
    opt.step()  # trains fused without complaint
    assert float(opt.state[param]["step"]) == 2.0
    set_fused(opt, False)
    assert opt.param_groups[0]["fused"] is False and opt.state[param]["step"].device.type == "cpu"


def test_every_training_batch_has_the_full_size() -> None:
    train, val = _tiny_data(100)  # 66 training images: 4 batches of 16, the 2 left over are dropped
    sizes: list[int] = []
    model = _tiny_model()
    model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]) if m.training else None)
    result = fit(
        model,
        train,
        val,
        lr=1e-2,
        batch_size=16,
        cfg=TrainConfig(epochs=2, patience=2),
        transform=BatchTransform([0.5], [0.5]),
    )
    assert sizes == [16] * 8 and result.epochs_run == 2


def test_compile_compiles_every_architecture_of_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fit compiles afresh: past dynamo's recompile limit later trials used to run eager."""
    from torch._dynamo.utils import counters  # private: dynamo's own compile counters

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)  # the limit (8) reached at once
    # Dynamo's code cache (what fills up) is the same for every backend; aot_eager skips
    # inductor's C++ build (about 45 s per architecture on a busy 2-core machine).
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    train, val = _tiny_data(100)
    cfg = TrainConfig(epochs=1, patience=1, compile=True, amp=False)
    for c1 in (4, 6, 8):
        counters.clear()
        result = fit(
            _tiny_model(c1),
            train,
            val,
            lr=1e-2,
            batch_size=16,
            cfg=cfg,
            transform=BatchTransform([0.5], [0.5]),
        )
        assert counters["frames"]["ok"] >= 1, f"c1={c1} ran eager"
        assert result.compile_seconds > 0 and result.images_per_s > 0


def _keep_weights(into: list[dict[str, torch.Tensor]], state: FitState) -> None:
    into.append(copy.deepcopy(state.model.state_dict()))


def test_default_training_is_the_plain_adam_loop() -> None:
    """Defaults (and the same settings written out) give exactly a hand-written Adam loop's numbers."""
    import torch.nn.functional as F

    from search.engine.train import DROPOUT_STREAM, mixed_seed

    train, val = _tiny_data()
    transform = BatchTransform([0.5], [0.5])  # channels_last off: the hand loop keeps NCHW
    explicit = TrainConfig(
        epochs=2,
        patience=2,
        amp=False,
        channels_last=False,
        optimizer="adam",
        lr_schedule="constant",
        warmup_epochs=0,
    )
    runs = []
    for cfg in (TrainConfig(epochs=2, patience=2, amp=False, channels_last=False), explicit):
        states: list[dict[str, torch.Tensor]] = []
        result = fit(
            _tiny_model(),
            train,
            val,
            lr=1e-2,
            batch_size=16,
            cfg=cfg,
            transform=transform,
            seed=5,
            on_checkpoint=functools.partial(_keep_weights, states),
        )
        runs.append(([m.train_loss for m in result.history], states[-1]))
    assert runs[0][0] == runs[1][0]

    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.0)
    gen = torch.Generator().manual_seed(5)
    losses = []
    for epoch in range(2):
        model.train()
        torch.default_generator.manual_seed(mixed_seed(5, epoch + 1, DROPOUT_STREAM))
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        for step in range(len(train) // 16):
            idx = perm[step * 16 : (step + 1) * 16]
            x = transform(train.images[idx], train=True, generator=gen)
            loss = F.cross_entropy(model(x).float(), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * 16
        losses.append(total / (len(train) // 16 * 16))
    assert runs[0][0] == pytest.approx(losses, rel=1e-6)
    for key, value in model.state_dict().items():
        assert torch.equal(value, runs[0][1][key]), key
        assert torch.equal(value, runs[1][1][key]), key


@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        ({"optimizer": "adam"}, torch.optim.Adam),
        ({"optimizer": "adamw", "weight_decay": 0.01}, torch.optim.AdamW),
        ({"optimizer": "sgd"}, torch.optim.SGD),
        ({"optimizer": "sgd", "nesterov": True, "momentum": 0.5, "label_smoothing": 0.1}, torch.optim.SGD),
    ],
)
def test_each_optimizer_trains(settings: dict[str, Any], kind: type) -> None:
    train, val = _tiny_data()
    model = _tiny_model()
    before = copy.deepcopy(model.state_dict())
    seen: list[torch.optim.Optimizer] = []
    cfg = TrainConfig(epochs=1, patience=1, amp=False, **settings)
    result = fit(
        model,
        train,
        val,
        lr=1e-2,
        batch_size=16,
        cfg=cfg,
        transform=BatchTransform([0.5], [0.5]),
        on_checkpoint=lambda s: seen.append(s.optimizer),
    )
    assert type(seen[0]) is kind and result.epochs_run == 1 and not result.failed
    group = seen[0].param_groups[0]
    assert group["weight_decay"] == cfg.weight_decay
    if kind is torch.optim.SGD:
        assert (group["momentum"], group["nesterov"]) == (cfg.momentum, cfg.nesterov)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lr_factor_shapes() -> None:
    from search.engine.optim import lr_factor

    # constant with a 4-step warm-up
    assert [lr_factor("constant", s, 20, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert all(lr_factor("constant", s, 20, 0) == 1.0 for s in range(20))
    # cosine: warm-up, then from 1 down to 0 at the last step
    cos = [lr_factor("cosine", s, 20, 4) for s in range(21)]
    assert cos[:4] == [0.25, 0.5, 0.75, 1.0] and cos[4] == 1.0
    assert all(a > b for a, b in itertools.pairwise(cos[4:])) and cos[20] == pytest.approx(0.0)
    assert cos[12] == pytest.approx(0.5)
    # onecycle: up from 1/25 to 1 over the rise (30% of the steps without warm-up), down to 1/25e4
    one = [lr_factor("onecycle", s, 10, 0) for s in range(11)]
    assert one[0] == pytest.approx(1 / 25) and one[3] == pytest.approx(1.0) and max(one) == one[3]
    assert one[10] == pytest.approx(1 / 25e4)
    assert lr_factor("onecycle", 5, 10, 5) == pytest.approx(1.0)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "constant"])
def test_fit_follows_the_schedule_and_resumes_it(schedule: str, tmp_path: Path) -> None:
    from search.engine.optim import lr_factor
    from search.store.artifacts import CheckpointStore

    train, val = _tiny_data()  # 64 training images, batch 16: 4 steps an epoch
    cfg = TrainConfig(epochs=4, patience=4, amp=False, lr_schedule=schedule, warmup_epochs=1)  # type: ignore[arg-type]
    store = CheckpointStore(tmp_path, "study")
    lrs: list[float] = []

    def record(state: FitState) -> None:
        lrs.append(state.optimizer.param_groups[0]["lr"])
        if state.epoch == 2:
            store.save(0, state.state_dict())

    kw: dict[str, Any] = {"lr": 1e-2, "batch_size": 16, "cfg": cfg, "transform": BatchTransform([0.5], [0.5])}
    full = fit(_tiny_model(), train, val, seed=2, on_checkpoint=record, **kw)
    # after epoch e the next step is e * 4: the lr set for it
    assert lrs == pytest.approx([1e-2 * lr_factor(schedule, 4 * e, 16, 4) for e in range(1, 5)])
    assert len(set(lrs)) > 1 or schedule == "constant"
    checkpoint = store.load(0)
    assert checkpoint is not None and checkpoint["scheduler"]["last_epoch"] == 8
    resumed_lrs: list[float] = []
    resumed = fit(
        _tiny_model(),
        train,
        val,
        seed=2,
        resume=checkpoint,
        on_checkpoint=lambda s: resumed_lrs.append(s.optimizer.param_groups[0]["lr"]),
        **kw,
    )
    assert resumed_lrs == lrs[2:]  # the schedule continues where the checkpoint stood
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in full.history]


def test_default_checkpoint_has_no_scheduler() -> None:
    train, val = _tiny_data()
    states: list[dict[str, Any]] = []
    fit(
        _tiny_model(),
        train,
        val,
        lr=1e-2,
        batch_size=16,
        cfg=TrainConfig(epochs=1, patience=1, amp=False),
        transform=BatchTransform([0.5], [0.5]),
        on_checkpoint=lambda s: states.append(s.state_dict()),
    )
    assert states[0]["scheduler"] is None
    assert "initial_lr" not in states[0]["optimizer"]["param_groups"][0]  # no scheduler touched the lr
