"""The CUDA path, on a real GPU: skipped without one; ``benchmarks/gpu_check.sh`` runs them there.

Covers ``fit`` with bf16 autocast, fused Adam, channels_last and cuDNN; evaluation under autocast;
the forward latency of ``search.constraints.max_latency_ms`` (synchronised timing);
checkpoint and resume on CUDA (and across devices); out-of-memory inside a trial (FAIL
``oom (...)`` and the memory given back); a broken CUDA context (a real device-side assert: the
worker ends, the trial is retried in a fresh process); two workers on one GPU; and finetune,
export and predict of a study trained on the GPU. Run them with ``pytest -m cuda``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from PIL import Image
from torch import nn

import search.study.objective
from search import cli
from search.config import ModelConfig, TrainConfig
from search.engine.augment import AugmentSpec, BatchTransform
from search.engine.data import ImageSet
from search.engine.evaluate import forward_latency_ms
from search.engine.inference import evaluate, predict_logits
from search.engine.model import ConvNet
from search.engine.train import FitState, fit
from search.results.export import load_export, predict_tensor
from tests.conftest import cli_env, run_cli, tiny_config, write_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")
DB = "storage/studies.db"


def _data(device: torch.device, n: int = 256) -> tuple[ImageSet, ImageSet]:
    """Three learnable classes of 3x16x16 uint8 images: class c is bright in channel c."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 100, (n, 3, 16, 16), dtype=torch.uint8, generator=gen)
    images[torch.arange(n), labels] += 120
    train, val = ImageSet(images[: n // 2], labels[: n // 2]), ImageSet(images[n // 2 :], labels[n // 2 :])
    return train.to(device), val.to(device)


def _model() -> ConvNet:
    torch.manual_seed(1)
    return ConvNet(ModelConfig(padding=1), (8, 16, 32), (3, 16, 16), 3)


def _keep(states: list[dict[str, Any]]) -> Callable[[FitState], None]:
    """A checkpoint callback keeping copies (fit's state holds its live tensors, as a save would not)."""
    return lambda state: states.append(copy.deepcopy(state.state_dict()))


TRANSFORM = BatchTransform([0.5] * 3, [0.25] * 3, AugmentSpec(hflip=True), channels_last=True)


def _study(workdir: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / DB}")


# --------------------------------------------------------------------------- fit and evaluate


def test_fit_trains_in_bf16_with_fused_adam_channels_last_and_cudnn() -> None:
    train, val = _data(CUDA)
    model = _model()
    seen: list[tuple[torch.dtype, bool]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module.training:
            seen.append((output.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last)))

    model.first_conv.register_forward_hook(hook)
    states: list[dict[str, Any]] = []
    cfg = TrainConfig(epochs=3, patience=3, amp=True, channels_last=True)
    result = fit(
        model, train, val, lr=1e-2, batch_size=32, cfg=cfg, transform=TRANSFORM, on_checkpoint=_keep(states)
    )
    assert seen and set(seen) == {(torch.bfloat16, True)}  # bf16 autocast, channels_last input
    assert states[-1]["optimizer"]["param_groups"][0]["fused"] is True  # one fused Adam kernel
    assert torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
    assert all(math.isfinite(m.train_loss) for m in result.history)
    assert result.best_val_acc > 0.6  # chance is 1/3
    assert result.images_per_s > 0
    assert next(model.parameters()).device.type == "cuda"
    assert result.best_state is not None and {v.device.type for v in result.best_state.values()} == {"cpu"}


def test_evaluate_under_autocast_matches_fp32_and_the_cpu() -> None:
    train, val = _data(CUDA)
    model = _model()
    fit(model, train, val, lr=1e-2, batch_size=32, cfg=TrainConfig(epochs=2, patience=2), transform=TRANSFORM)
    logits = predict_logits(model, val.images, TRANSFORM, batch_size=50, precision="bf16")
    assert logits.dtype == torch.float32 and logits.device.type == "cuda" and logits.shape == (len(val), 3)
    loss_bf16, acc_bf16 = evaluate(model, val, TRANSFORM, batch_size=50, precision="bf16")
    loss_fp32, acc_fp32 = evaluate(model, val, TRANSFORM, batch_size=50, precision="fp32")
    model.cpu()
    _, cpu_val = _data(torch.device("cpu"))
    loss_cpu, acc_cpu = evaluate(model, cpu_val, TRANSFORM, batch_size=50, precision="fp32")
    assert loss_bf16 == pytest.approx(loss_fp32, rel=0.05, abs=0.02)
    assert abs(acc_bf16 - acc_fp32) <= 0.05
    assert loss_fp32 == pytest.approx(loss_cpu, rel=1e-2, abs=1e-2)  # cuDNN may use TF32
    assert abs(acc_fp32 - acc_cpu) <= 0.03


# --------------------------------------------------------------------------- checkpoint and resume


def test_forward_latency_on_cuda_is_timed_on_the_gpu() -> None:
    model = _model()
    ms = forward_latency_ms(model, (3, 16, 16), CUDA)
    assert math.isfinite(ms) and ms > 0
    assert next(model.parameters()).device.type == "cuda" and model.training


def test_resume_on_cuda_from_a_cuda_and_from_a_cpu_checkpoint() -> None:
    train, val = _data(CUDA)
    cfg = TrainConfig(epochs=3, patience=3, amp=True, channels_last=True)
    states: list[dict[str, Any]] = []
    full = fit(
        _model(),
        train,
        val,
        lr=1e-2,
        batch_size=32,
        cfg=cfg,
        transform=TRANSFORM,
        on_checkpoint=_keep(states),
    )
    resumed = fit(
        _model(), train, val, lr=1e-2, batch_size=32, cfg=cfg, transform=TRANSFORM, resume=states[0]
    )
    assert resumed.epochs_run == 3 and [m.epoch for m in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == full.history[0]  # the checkpointed epoch, as it was
    for a, b in zip(resumed.history[1:], full.history[1:], strict=True):
        assert a.val_acc == pytest.approx(b.val_acc, abs=0.05)  # cuDNN may pick other kernels

    # a checkpoint written on the CPU continues on the GPU, with the GPU's fused Adam
    cpu_train, cpu_val = _data(torch.device("cpu"))
    cpu_states: list[dict[str, Any]] = []
    cpu_cfg = TrainConfig(epochs=2, patience=2, amp=True, channels_last=True)
    fit(
        _model(),
        cpu_train,
        cpu_val,
        lr=1e-2,
        batch_size=32,
        cfg=cpu_cfg,
        transform=TRANSFORM,
        on_checkpoint=_keep(cpu_states),
    )
    after: list[dict[str, Any]] = []
    moved = fit(
        _model(),
        train,
        val,
        lr=1e-2,
        batch_size=32,
        cfg=cfg,
        transform=TRANSFORM,
        resume=cpu_states[0],
        on_checkpoint=_keep(after),
    )
    assert moved.epochs_run == 3
    assert [s["epoch"] for s in after] == [2, 3]
    assert after[-1]["optimizer"]["param_groups"][0]["fused"] is True
    assert all(math.isfinite(m.train_loss) for m in moved.history)

    # and a GPU checkpoint continues on the CPU
    back = fit(
        _model(), cpu_train, cpu_val, lr=1e-2, batch_size=32, cfg=cfg, transform=TRANSFORM, resume=states[0]
    )
    assert back.epochs_run == 3 and all(math.isfinite(m.train_loss) for m in back.history)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_fused_adamw_and_sgd_with_a_cosine_schedule_resume_on_cuda(optimizer: str) -> None:
    train, val = _data(CUDA)
    cfg = TrainConfig(epochs=3, patience=3, optimizer=optimizer, lr_schedule="cosine", warmup_epochs=1)  # type: ignore[arg-type]
    states: list[dict[str, Any]] = []
    kw: dict[str, Any] = {"lr": 1e-2, "batch_size": 32, "cfg": cfg, "transform": TRANSFORM}
    full = fit(
        _model(), train, val, on_checkpoint=lambda s: states.append(copy.deepcopy(s.state_dict())), **kw
    )
    assert states[-1]["optimizer"]["param_groups"][0]["fused"] is True
    assert all(math.isfinite(m.train_loss) for m in full.history)
    lrs = [st["optimizer"]["param_groups"][0]["lr"] for st in states]
    assert lrs[0] > lrs[1] > lrs[2] == pytest.approx(0.0, abs=1e-9)  # warm-up done, then down to 0
    resumed = fit(_model(), train, val, resume=states[0], **kw)
    assert resumed.epochs_run == 3 and all(math.isfinite(m.train_loss) for m in resumed.history)


# --------------------------------------------------------------------------- trials that break the GPU


def test_out_of_memory_in_a_trial_is_a_fail_and_the_memory_is_given_back(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fit = search.study.objective.fit
    reserved_at_start: list[int] = []

    def hungry_fit(*args: Any, **kwargs: Any) -> Any:
        reserved_at_start.append(torch.cuda.memory_reserved())
        if len(reserved_at_start) == 1:  # the first trial takes the GPU's memory until it runs out
            hoard = []
            for _ in range(10_000):
                hoard.append(torch.empty(2 << 30, dtype=torch.uint8, device="cuda"))
            raise AssertionError(f"no out-of-memory after {len(hoard) * 2} GiB")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(search.study.objective, "fit", hungry_fit)
    write_config(workdir / "tiny.yaml", tiny_config(train={"epochs": 1, "patience": 1}))
    assert cli.main(["run", "tiny.yaml", "--device", "cuda"]) == 0
    trials = _study(workdir).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"] == "oom (batch_size=64)"
    assert [t.state for t in trials[1:]] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(t.user_attrs["device"].startswith("cuda") for t in trials)
    # the next trial started with the hoard given back (not held in PyTorch's cache)
    assert reserved_at_start[1] < 1 << 30, reserved_at_start


# a device-side assert (an out-of-bounds index inside a kernel) in the first trial's fit
DEVICE_ASSERT = """
import sys, torch, search.study.objective
real_fit, calls = search.study.objective.fit, []
def fit(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:
        x = torch.zeros(4, device="cuda")
        x[torch.tensor([10], device="cuda")].sum().item()
    return real_fit(*args, **kwargs)
search.study.objective.fit = fit
from search.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_device_side_assert_ends_the_worker_and_a_fresh_process_retries_the_trial(workdir: Path) -> None:
    raw = tiny_config(train={"epochs": 1, "patience": 1})
    raw["search"] = {**raw["search"], "n_trials": 2}
    write_config(workdir / "tiny.yaml", raw)
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_ASSERT, "run", "tiny.yaml", "--device", "cuda"],
        cwd=workdir,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "error: device: trial 0: device error: " in proc.stderr
    trials = _study(workdir).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[0].user_attrs["fail_reason"].startswith("device error: ")
    assert "CUDA error" in trials[0].user_attrs["fail_reason"]
    url = f"sqlite:///{workdir / DB}"
    run_cli("worker", "--study-name", "tiny", "--storage", url, "--device", "cuda", cwd=workdir, check=0)
    trials = _study(workdir).trials
    assert trials[1].state.name == "COMPLETE" and trials[1].params == trials[0].params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2


# --------------------------------------------------------------------------- two workers, one GPU


def test_two_workers_share_one_gpu(workdir: Path) -> None:
    raw = tiny_config(train={"epochs": 2, "patience": 2})
    raw["search"] = {**raw["search"], "n_trials": 4}
    write_config(workdir / "tiny.yaml", raw)
    run_cli(
        "run",
        "tiny.yaml",
        "--device",
        "cuda:0",
        "--workers",
        "2",
        "--workers-per-gpu",
        "2",
        cwd=workdir,
        check=0,
    )
    trials = _study(workdir).trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4
    assert not [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("fail_reason") != "surplus"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu = visible.split(",")[0].strip() if visible is not None else "0"
    assert {t.user_attrs["device"] for t in trials if t.state.name == "COMPLETE"} == {f"cuda:0 (GPU {gpu})"}
    assert len({t.user_attrs["pid"] for t in trials}) <= 2


# --------------------------------------------------------------------------- finetune, export, predict


def test_finetune_export_and_predict_a_study_trained_on_the_gpu(workdir: Path) -> None:
    write_config(workdir / "tiny.yaml", tiny_config(train={"epochs": 2, "patience": 2}))
    run_cli("run", "tiny.yaml", "--device", "cuda", cwd=workdir, check=0)
    best = _study(workdir).best_trial
    url = f"sqlite:///{workdir / DB}"
    ft = run_cli(
        "finetune", "tiny", "--storage", url, "--device", "cuda", "--epochs", "1", cwd=workdir, check=0
    )
    assert "test accuracy" in ft.stdout
    metrics = json.loads((workdir / "storage" / "finetune" / "tiny" / "metrics.json").read_text())
    assert metrics["trial"] == best.number
    assert metrics["start_val_acc"] == pytest.approx(best.value, abs=0.02)  # bf16 on the same weights
    assert 0 <= metrics["test_accuracy"] <= 1

    exported = run_cli("export", "tiny", "--storage", url, cwd=workdir, check=0)
    match = re.search(r" to (\S+)$", exported.stdout.strip())
    assert match, exported.stdout
    folder = workdir / match[1]
    assert (folder / "best.pt").is_file()

    from search.engine.data import load_splits
    from search.study.stored import study_config

    cfg = study_config(_study(workdir))
    images = load_splits(cfg.data, cfg.seed).val.images[:64]
    cpu_model, transform, _ = load_export(folder)
    gpu_model, _, _ = load_export(folder, device="cuda")
    on_cpu = predict_tensor(cpu_model, transform, images)
    on_gpu = predict_tensor(gpu_model, transform, images.cuda())
    assert on_gpu.device.type == "cuda"
    assert (on_cpu.argmax(1) == on_gpu.cpu().argmax(1)).float().mean() >= 0.95

    paths = []
    for i in range(2):
        paths.append(workdir / f"digit{i}.png")
        Image.fromarray(images[i, 0].numpy()).save(paths[-1])
    predicted = run_cli("predict", str(folder), *map(str, paths), cwd=workdir, check=0)
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == 2 and all(
        len(re.findall(r"\S+ \d\.\d{3}", line.split(": ", 1)[1])) == 3 for line in lines
    )
