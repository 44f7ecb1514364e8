"""The training device: which one (``resolve_device``), its autocast, host syncs, cuDNN settings
and the generator dropout draws from. Does not import optuna."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch


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


def autocast(device: torch.device, amp: bool) -> AbstractContextManager[object]:
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
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
