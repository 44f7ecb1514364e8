"""Small helpers shared by the benchmark scripts: the machine, medians, plain-text tables."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch

REPO = Path(__file__).resolve().parents[1]

# The benchmarks' two small real datasets, as `data` sections: digits and the CIFAR-10 sample.
REAL_DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits"},
    "cifar10-sample": {
        "dataset": "imagefolder",
        "root": str(REPO / "tests" / "data" / "cifar10-sample"),
        "val_fraction": 0.2,
        "test_fraction": 0.1,
    },
}


def gpu_name(device: torch.device | None = None) -> str:
    """The GPU a run uses (``device``; None: GPU 0, if any), with its CUDA and cuDNN versions."""
    if device is not None and device.type != "cuda":
        return "no GPU used"
    if not torch.cuda.is_available():
        return "no GPU"
    index = 0 if device is None else device.index
    if index is None:
        index = torch.cuda.current_device()
    return (
        f"{torch.cuda.get_device_name(index)} (cuda:{index}), CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}"
    )


def machine(device: torch.device | None = None) -> str:
    """One line naming the machine: CPU model and cores, the GPU used (if any), torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = gpu_name(device)
    return (
        f"{cpu}, {os.cpu_count()} CPU(s), torch {torch.__version__} "
        f"({torch.get_num_threads()} thread(s)), {gpu}"
    )


def quiet_logging() -> None:
    """Warnings only, from us and from Optuna (its "experimental" warnings silenced)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(cells[0]), sep, *[line(r) for r in cells[1:]]])
