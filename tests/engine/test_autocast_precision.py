"""train.precision: what auto resolves to on CUDA and on CPUs with and without native bf16 units
(detection injected), the amp/precision contradiction, and training and evaluating in bf16."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from search.config import ConfigError, DataConfig, ModelConfig, TrainConfig, config_from_dict
from search.engine import device as device_mod
from search.engine.augment import BatchTransform, channel_stats
from search.engine.data import load_splits
from search.engine.device import autocast, bf16_units, cpu_flags, native_bf16_cpu, resolve_precision
from search.engine.inference import evaluate
from search.engine.model import build_convnet
from search.engine.train import fit

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
AMX = ("amx_bf16", "avx512_bf16")
NONE: tuple[str, ...] = ()


@pytest.mark.parametrize(
    ("precision", "amp", "device", "units", "expected"),
    [
        # auto: bf16 where it is computed natively (CUDA, AMX / AVX512-BF16 CPUs), fp32 elsewhere
        ("auto", True, CUDA, NONE, "bf16"),
        ("auto", True, CPU, AMX, "bf16"),
        ("auto", True, CPU, ("avx512_bf16",), "bf16"),
        ("auto", True, CPU, ("amx_bf16",), "bf16"),
        ("auto", True, CPU, NONE, "fp32"),
        # amp: false keeps its meaning: float32 everywhere
        ("auto", False, CUDA, AMX, "fp32"),
        ("auto", False, CPU, AMX, "fp32"),
        ("fp32", False, CPU, AMX, "fp32"),
        # an explicit precision is what it says, whatever the CPU
        ("fp32", True, CUDA, AMX, "fp32"),
        ("fp32", True, CPU, AMX, "fp32"),
        ("bf16", True, CPU, NONE, "bf16"),
        ("bf16", True, CUDA, NONE, "bf16"),
    ],
)
def test_the_precision_resolution_table(
    precision: str, amp: bool, device: torch.device, units: tuple[str, ...], expected: str
) -> None:
    cfg = TrainConfig(amp=amp, precision=precision)  # type: ignore[arg-type]
    assert resolve_precision(cfg, device, cpu_units=units) == expected


def test_amp_false_with_bf16_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"amp": False, "precision": "bf16"}})
    message = str(info.value)
    assert info.value.field == "train.precision"
    assert "train.amp: false" in message and "train.precision: bf16" in message and "Fix:" in message
    with pytest.raises(ConfigError, match="auto, fp32 or bf16"):
        config_from_dict({"train": {"precision": "fp16"}})
    # amp: true (its default) and amp: false with fp32 or auto are consistent
    assert config_from_dict({"train": {"amp": True, "precision": "fp32"}}).train.precision == "fp32"
    assert config_from_dict({"train": {"amp": False}}).train.precision == "auto"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    with_units = tmp_path / "with"
    with_units.write_text(
        "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    )
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nmodel name\t: EPYC\nflags\t\t: fpu sse2 avx2 fma\n")
    assert {"avx512_bf16", "amx_bf16", "avx512f"} <= cpu_flags(with_units)
    assert bf16_units(cpu_flags(with_units)) == ("amx_bf16", "avx512_bf16")
    assert bf16_units(cpu_flags(without)) == ()
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_detection_runs_once_and_auto_follows_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    calls: list[Path] = []
    fake = tmp_path / "cpuinfo"

    def flags(cpuinfo: Path = fake) -> frozenset[str]:
        calls.append(cpuinfo)
        return frozenset({"avx2", "amx_bf16"})

    monkeypatch.setattr(device_mod, "cpu_flags", flags)
    native_bf16_cpu.cache_clear()
    device_mod._log_cpu_choice.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="search.engine.device"):
            assert [resolve_precision(TrainConfig(), CPU) for _ in range(3)] == ["bf16"] * 3
        assert len(calls) == 1  # detected once per process
        said = [r.getMessage() for r in caplog.records if "train.precision auto" in r.getMessage()]
        assert said == ["train.precision auto: bf16 on the CPU (it computes bf16 natively: amx_bf16)"]
    finally:
        native_bf16_cpu.cache_clear()
        device_mod._log_cpu_choice.cache_clear()


def test_this_machines_auto_matches_its_flags() -> None:
    expected = "bf16" if bf16_units(cpu_flags()) else "fp32"
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo: torch's own check decides")
    assert resolve_precision(TrainConfig(), CPU) == expected


def test_fit_in_bf16_on_the_cpu_learns_and_validates_in_bf16(tmp_path: Path) -> None:
    splits = load_splits(DataConfig(cache_dir=str(tmp_path)), seed=0)
    mean, std = channel_stats(splits.train.images)
    transform = BatchTransform(mean, std)
    torch.manual_seed(0)
    model = build_convnet(ModelConfig(padding=1), 8, 16, 32, splits.in_shape, 10)
    cfg = TrainConfig(epochs=3, patience=3, precision="bf16")
    result = fit(model, splits.train, splits.val, lr=3e-3, batch_size=64, cfg=cfg, transform=transform)
    assert result.best_val_acc > 0.8
    # the weights stay float32 (autocast computes in bf16); its best epoch re-measured in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _, acc = evaluate(model, splits.val, transform, batch_size=1024, precision="bf16")
    assert acc == pytest.approx(result.best_val_acc)
    with torch.no_grad(), autocast(CPU, "bf16"):
        out = model.eval()(transform(splits.val.images[:4], train=False))
    assert out.dtype == torch.bfloat16
    with torch.no_grad(), autocast(CPU, "fp32"):
        assert model(transform(splits.val.images[:4], train=False)).dtype == torch.float32
