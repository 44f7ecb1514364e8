"""fp32 against bf16 autocast on the CPU: the same trials, the same seeds, side by side.

Every trial of ``TRIALS`` trains with :func:`search.engine.train.fit` (the loop every trial runs:
channels_last, ``BatchTransform``, validation each epoch, the best epoch kept) on each dataset of
``DATASETS`` (digits, the CIFAR-10 sample in ``tests/data/cifar10-sample``, a synthetic set), for
each seed, once in fp32 (``train.precision: fp32``) and once in bf16 (``train.precision: bf16``).
The two precisions of one (dataset, trial, seed) run back to back, so both see the same machine
load. Per dataset and trial the table gives training images/s (steady; median over seeds) and the
best validation accuracy (mean over seeds) of each, the speed-up bf16 / fp32, the accuracy gap
bf16 - fp32 and the seed-to-seed spread (the largest max - min over seeds of either precision).
bf16 passes where it is faster and its gap stays within the spread (or one validation image).

The last lines name the machine (CPU model, its bf16 units) and, per dataset, the verdict; the
very last says what ``train.precision: auto`` picks on this machine.

    python benchmarks/precision.py                 # 3 datasets x 3 trials x seeds 0 1, 4 epochs
    python benchmarks/precision.py --quick         # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks._common import REAL_DATASETS, machine, median, quiet_logging, table
from search.config import ModelConfig, TrainConfig, config_from_dict
from search.engine.augment import BatchTransform, channel_stats
from search.engine.data import Splits, load_splits
from search.engine.device import native_bf16_cpu, resolve_precision
from search.engine.model import build_convnet
from search.engine.train import fit

DATASETS: dict[str, dict[str, Any]] = {
    **REAL_DATASETS,
    "synthetic": {
        "dataset": "synthetic",
        "synthetic": {"shape": [3, 32, 32], "n_classes": 10, "n_samples": 1000},
    },
}


@dataclass(frozen=True)
class Trial:
    """One param set: widths, lr, batch size and the model options beyond the defaults."""

    c1: int
    c2: int
    l1: int
    lr: float
    batch_size: int
    model: dict[str, Any]


TRIALS: dict[str, Trial] = {
    # the README's space around its midpoint
    "small-b64": Trial(8, 16, 32, 3e-3, 64, {"padding": 1}),
    # the seed notebook's net at a large batch (issue 30's probe)
    "seed-net-b256": Trial(48, 96, 256, 1e-3, 256, {"padding": 1}),
    # BatchNorm and residual stages: the layers autocast may keep in fp32
    "bn-residual-b64": Trial(16, 32, 64, 3e-3, 64, {"padding": 1, "batchnorm": True, "residual": True}),
}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Run:
    dataset: str
    trial: str
    seed: int
    precision: str
    images_per_s: float
    best_val_acc: float
    n_val: int


def train_once(splits: Splits, trial: Trial, seed: int, precision: str, epochs: int) -> Run:
    """One trial trained with ``fit`` in ``precision`` (its images/s and best validation accuracy)."""
    mean, std = channel_stats(splits.train.images)
    transform = BatchTransform(mean, std, channels_last=True)
    torch.manual_seed(seed)
    model = build_convnet(
        ModelConfig(**trial.model), trial.c1, trial.c2, trial.l1, splits.in_shape, splits.n_classes
    )
    cfg = TrainConfig(epochs=epochs, patience=epochs, precision=precision)  # type: ignore[arg-type]
    result = fit(
        model,
        splits.train,
        splits.val,
        lr=trial.lr,
        batch_size=trial.batch_size,
        cfg=cfg,
        transform=transform,
        seed=seed,
    )
    return Run("", "", seed, precision, result.images_per_s, result.best_val_acc, len(splits.val))


def spread(values: Sequence[float]) -> float:
    return max(values) - min(values) if values else 0.0


def summarise(runs: Sequence[Run]) -> tuple[list[list[object]], dict[str, list[bool]]]:
    """Table rows per (dataset, trial) and, per dataset, whether bf16 passed each trial."""
    rows: list[list[object]] = []
    passed: dict[str, list[bool]] = {}
    keys = dict.fromkeys((r.dataset, r.trial) for r in runs)
    for dataset, trial in keys:
        of = {
            p: [r for r in runs if (r.dataset, r.trial, r.precision) == (dataset, trial, p)]
            for p in PRECISIONS
        }
        speed = {p: median([r.images_per_s for r in of[p]]) for p in PRECISIONS}
        acc = {p: statistics.fmean(r.best_val_acc for r in of[p]) for p in PRECISIONS}
        seeds = max(spread([r.best_val_acc for r in of[p]]) for p in PRECISIONS)
        one_image = 1.0 / max(of["fp32"][0].n_val, 1)
        gap = acc["bf16"] - acc["fp32"]
        faster = speed["bf16"] / speed["fp32"] if speed["fp32"] > 0 else float("nan")
        ok = faster > 1.0 and abs(gap) <= max(seeds, one_image) + 1e-9
        passed.setdefault(dataset, []).append(ok)
        rows.append(
            [
                dataset,
                trial,
                f"{speed['fp32']:.0f}",
                f"{speed['bf16']:.0f}",
                f"{faster:.2f}x",
                f"{100 * acc['fp32']:.2f}",
                f"{100 * acc['bf16']:.2f}",
                f"{100 * gap:+.2f}",
                f"{100 * seeds:.2f}",
                "yes" if ok else "no",
            ]
        )
    return rows, passed


HEADERS = (
    "dataset",
    "trial",
    "fp32 img/s",
    "bf16 img/s",
    "bf16/fp32",
    "fp32 best val %",
    "bf16 best val %",
    "gap (pts)",
    "seed spread (pts)",
    "bf16 ok",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seconds: digits only, 1 trial, 1 seed, 1 epoch")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 (0 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs a trial (default 4; 1 with --quick)")
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=None)
    p.add_argument("--trials", nargs="+", choices=sorted(TRIALS), default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    epochs = args.epochs or (1 if args.quick else 4)
    datasets = args.datasets or (["digits"] if args.quick else list(DATASETS))
    trials = args.trials or (["small-b64"] if args.quick else list(TRIALS))
    runs: list[Run] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="precision-bench-") as cache:
        for name in datasets:
            cfg = config_from_dict({"data": {**DATASETS[name], "cache_dir": cache}})
            for seed in seeds:
                splits = load_splits(cfg.data, seed)
                for trial in trials:
                    for precision in PRECISIONS:
                        run = train_once(splits, TRIALS[trial], seed, precision, epochs)
                        runs.append(
                            Run(name, trial, seed, precision, run.images_per_s, run.best_val_acc, run.n_val)
                        )
    rows, passed = summarise(runs)
    print(table(HEADERS, rows))
    units = native_bf16_cpu()
    print(f"machine: {machine()}; bf16 units: {', '.join(units) or 'none'}")
    print(
        f"seeds {' '.join(map(str, seeds))}, {epochs} epoch(s) a trial, {time.perf_counter() - started:.0f} s"
    )
    for name, oks in passed.items():
        print(f"{name}: bf16 faster and within the seed spread on {sum(oks)}/{len(oks)} trial(s)")
    print(f"train.precision auto on this CPU: {resolve_precision(TrainConfig(), torch.device('cpu'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
