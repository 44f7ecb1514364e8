"""The training device: which one (``resolve_device``), the precision it trains in
(``resolve_precision``: ``train.precision`` and ``train.amp`` on this device and CPU) and its
autocast, host syncs, cuDNN settings and the generator dropout draws from. Does not import optuna."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import torch

from search.config import TrainConfig

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]  # what a run trains in; train.precision adds "auto"
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")
# /proc/cpuinfo flags of the units that compute bf16 natively: AMX tiles, AVX512-BF16 dot products
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA GPU when there is one, else the CPU. Raises ValueError if absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{name!r} is not a device (auto, cpu, cuda or cuda:N)") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device type {device.type!r} is not supported (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA GPU is visible")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return device


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux; empty where it cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def bf16_units(flags: Iterable[str]) -> tuple[str, ...]:
    """Which of ``BF16_CPU_FLAGS`` are among ``flags`` (empty: the CPU emulates bf16, slowly)."""
    have = set(flags)
    return tuple(f for f in BF16_CPU_FLAGS if f in have)


@functools.cache
def native_bf16_cpu() -> tuple[str, ...]:
    """This CPU's native bf16 units, detected once per process: ``/proc/cpuinfo``'s flags, else
    (no such file: macOS, Windows) torch's own CPU check. Empty when there are none."""
    units = bf16_units(cpu_flags())
    if units or CPUINFO.exists():
        return units
    checks = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    found = []
    for flag, name in checks:
        check = getattr(torch.cpu, name, None)
        if callable(check) and check():
            found.append(flag)
    return tuple(found)


def resolve_precision(
    cfg: TrainConfig, device: torch.device, *, cpu_units: tuple[str, ...] | None = None
) -> Precision:
    """What ``cfg`` trains in on ``device``: ``train.precision`` when fp32 or bf16; ``auto``: bf16
    on CUDA and on a CPU with native bf16 units (``cpu_units``; default: :func:`native_bf16_cpu`),
    fp32 elsewhere; fp32 whenever ``train.amp`` is false (the config refuses amp false with bf16)."""
    if not cfg.amp or cfg.precision == "fp32":
        return "fp32"
    if cfg.precision == "bf16" or device.type == "cuda":
        return "bf16"
    units = native_bf16_cpu() if cpu_units is None else cpu_units
    _log_cpu_choice(units)
    return "bf16" if units else "fp32"


@functools.cache
def _log_cpu_choice(units: tuple[str, ...]) -> None:
    """Say once per process what ``train.precision: auto`` chose on the CPU, and why."""
    if units:
        log.info("train.precision auto: bf16 on the CPU (it computes bf16 natively: %s)", ", ".join(units))
    else:
        log.info("train.precision auto: fp32 on the CPU (no amx_bf16 or avx512_bf16 unit)")


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """bf16 autocast on ``device`` when ``precision`` is ``bf16``; else nothing (float32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def backend_settings(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning on CUDA (fixed batch shapes: it picks the fastest kernels once); restored after."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def seed_dropout(device: torch.device, seed: int) -> None:
    """Seed the device's default generator, which dropout (eager and compiled) draws from."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
