"""The seed notebook's grid end to end, and training throughput at batch 256 / 512 / 1024 (GPU).

Part 1 runs ``study_configs/cifar10_grid.yaml`` (8 grid points, 10 epochs a trial, patience 3,
batch 512, the seed's augmentation) through the real objective and study code on CIFAR-shaped
synthetic data with 50,000 training images, and reports its wall time (data synthesis and the
move to the device included) against the seed's 49 min 44 s on an RTX 3070. Part 2 times one
training epoch (``search.engine.train.fit``) of the 48/96/256 net at batch 256, 512 and 1024 and reports
training images/s (median of ``--repeats``). The last line is ``grid: X.X s, Y.Yx the seed's time``.

    python benchmarks/seed_grid.py --device cuda                # the GPU measurement
    python benchmarks/seed_grid.py --device cuda --compile      # with torch.compile
    python benchmarks/seed_grid.py --quick                      # CPU, tiny: checks that it runs
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import torch
from optuna.trial import TrialState

from benchmarks._common import REPO, machine, median, quiet_logging, table
from search.config import load_config
from search.engine.device import resolve_device
from search.engine.train import fit
from search.store.artifacts import WeightStore
from search.study.objective import Objective
from search.study.run import RunOptions, run_study
from search.study.study import make_storage

log = logging.getLogger("seed_grid")
CONFIG = REPO / "study_configs" / "cifar10_grid.yaml"
SEED_SECONDS = 49 * 60 + 44  # the seed's 8-trial grid on an RTX 3070
N_TRAIN = 50_000
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2  # synthetic data has no official test split: held out, never used here


def grid_config(work: Path, args: argparse.Namespace) -> list[str]:
    n_samples = math.ceil(args.n_train / ((1 - VAL_FRACTION) * (1 - TEST_FRACTION)))
    overrides = [
        f"storage=sqlite:///{work / 'studies.db'}",
        f"artifacts_dir={work / 'artifacts'}",
        "data.dataset=synthetic",
        f"data.cache_dir={work / 'cache'}",
        f"data.val_fraction={VAL_FRACTION}",
        f"data.test_fraction={TEST_FRACTION}",
        "data.synthetic.shape=[3,32,32]",
        "data.synthetic.n_classes=10",
        f"data.synthetic.n_samples={n_samples}",
        f"train.compile={'true' if args.compile else 'false'}",
    ]
    if args.quick:
        overrides += ["search.n_trials=2", "train.epochs=1", "search.space.batch_size=16"]
    return overrides


def run_grid(work: Path, device: torch.device, args: argparse.Namespace) -> tuple[float, Objective, int]:
    cfg = load_config(CONFIG, grid_config(work, args))
    t0 = time.perf_counter()
    objective = Objective(cfg, device, WeightStore(cfg.artifacts_dir))
    run_study(cfg, RunOptions(objective=objective))
    study = optuna.load_study(study_name=cfg.name, storage=make_storage(cfg.storage))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        log.info("trial %d %s value=%s %s", t.number, t.state.name, t.value, t.params)
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    return wall, objective, done


def throughput(objective: Objective, batch: int, args: argparse.Namespace) -> tuple[float, float]:
    """Median training images/s of one epoch at ``batch`` (and the compile seconds, if any)."""
    cfg = objective.cfg
    train_cfg = type(cfg.train)(
        epochs=1, patience=1, amp=cfg.train.amp, channels_last=True, compile=args.compile
    )
    params = {"c1": 48, "c2": 96, "l1": 256}
    rates, compile_s = [], 0.0
    for r in range(args.repeats + 1):  # the first is a warm-up
        torch.manual_seed(r)
        model = objective.recipe(params).model()
        result = fit(
            model,
            objective.train,
            objective.val,
            lr=1e-3,
            batch_size=batch,
            cfg=train_cfg,
            transform=objective.transform,
            seed=r,
        )
        if r == 0:
            compile_s = result.compile_seconds
        else:
            rates.append(result.images_per_s)
    return median(rates), compile_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--quick", action="store_true", help="CPU-sized: about 96 images, 2 grid points, 1 epoch")
    p.add_argument("--n-train", type=int, default=None, help=f"training images (default {N_TRAIN})")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 256 512 1024")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs a batch size (default 3)")
    p.add_argument("--compile", action="store_true", help="train.compile=true")
    args = p.parse_args(argv)
    if args.n_train is None:
        args.n_train = 96 if args.quick else N_TRAIN
    if args.batch_sizes is None:
        args.batch_sizes = [8, 16, 32] if args.quick else [256, 512, 1024]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if min(args.batch_sizes) < 2 or args.n_train < 2 * max(args.batch_sizes):
        p.error("batch sizes must be >= 2 and at most half of --n-train")
    return args


def main(argv: list[str] | None = None) -> int:
    quiet_logging()
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: --device: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        wall, objective, done = run_grid(Path(tmp), device, args)
        rows = []
        for batch in args.batch_sizes:
            rate, compile_s = throughput(objective, batch, args)
            rows.append([batch, f"{rate:,.0f}", f"{compile_s:.1f}" if args.compile else "-"])
    print(f"machine: {machine(device)}; load average at the end: {os.getloadavg()[0]:.1f}")
    print(
        f"device: {device}; {CONFIG.relative_to(REPO)} on CIFAR-shaped synthetic data, "
        f"{len(objective.train):,} training / {len(objective.val):,} validation images; "
        f"compile: {'on' if args.compile else 'off'}{'; QUICK (not a measurement)' if args.quick else ''}"
    )
    print()
    print(
        table(
            ["grid", "trials completed", "wall s", "seed's wall s (RTX 3070)", "x faster"],
            [
                ["cifar10_grid", done, f"{wall:.1f}", SEED_SECONDS, f"{SEED_SECONDS / wall:.1f}"],
            ],
        )
    )
    print()
    print(table(["batch", "train images/s (48/96/256, median)", "compile s"], rows))
    print()
    print(f"grid: {wall:.1f} s, {SEED_SECONDS / wall:.1f}x the seed's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
