"""Pruning: the same study with pruner none, median and successive_halving.

Each run is ``study_configs/digits.yaml`` (TPE, seed 0, 10 epochs a trial, early stopping patience
3) with only the pruner changed, run through the real objective and study code on the CPU, each in
a fresh SQLite storage. Reported per pruner: trials pruned, total epochs trained (the sum of every
trial's ``epochs_run``), wall time, and the best validation accuracy. The last line is
``fewer epochs than none: median X.X %, successive_halving Y.Y %``.

    python benchmarks/pruning.py                 # 30 trials a pruner
    python benchmarks/pruning.py --n-trials 60
    python benchmarks/pruning.py --quick         # 4 trials of 2 epochs: checks that it runs
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import torch
from optuna.trial import TrialState

from benchmarks._common import REPO, machine, quiet_logging, table
from search.config import load_config
from search.store.artifacts import WeightStore
from search.study.objective import Objective
from search.study.run import RunOptions, run_study
from search.study.study import make_storage

log = logging.getLogger("pruning")
CONFIG = REPO / "study_configs" / "digits.yaml"
PRUNERS = ("none", "median", "successive_halving")


def run_one(pruner: str, work: Path, args: argparse.Namespace) -> dict[str, float]:
    overrides = [
        f"name=pruning-{pruner}",
        f"seed={args.seed}",
        f"storage=sqlite:///{work / f'{pruner}.db'}",
        f"artifacts_dir={work / 'artifacts' / pruner}",
        f"data.cache_dir={work / 'cache'}",
        f"search.n_trials={args.n_trials}",
        f"search.pruner.name={pruner}",
        "search.keep_top_k=1",
    ]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.quick:  # tiny nets; let the pruners act within a handful of 2-epoch trials
        overrides += [
            "search.pruner.n_startup_trials=1",
            "search.pruner.n_warmup_steps=0",
            "search.space.c1=4",
            "search.space.c2=8",
            "search.space.l1=16",
            "search.space.batch_size=256",
        ]
    cfg = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    objective = Objective(cfg, torch.device("cpu"), WeightStore(cfg.artifacts_dir))
    run_study(cfg, RunOptions(objective=objective))
    study = optuna.load_study(study_name=cfg.name, storage=make_storage(cfg.storage))
    wall = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return {
        "trials": len(trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "epochs": sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials),
        "wall_s": wall,
        "best": max((t.value for t in complete if t.value is not None), default=float("nan")),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="4 trials of 2 epochs a pruner, tiny nets")
    p.add_argument("--n-trials", type=int, default=None, help="trials a pruner (default 30)")
    p.add_argument("--epochs", type=int, default=None, help="epochs a trial (default: the config's 10)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n_trials is None:
        args.n_trials = 4 if args.quick else 30
    if args.epochs is None and args.quick:
        args.epochs = 2
    if args.n_trials < 1:
        p.error("--n-trials must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    quiet_logging()
    args = parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        for pruner in PRUNERS:
            results[pruner] = run_one(pruner, Path(tmp), args)
            log.info("%s: %s", pruner, results[pruner])
    base = results["none"]
    rows = []
    for pruner, r in results.items():
        saved = 100.0 * (1.0 - r["epochs"] / base["epochs"]) if base["epochs"] else 0.0
        rows.append(
            [
                pruner,
                int(r["trials"]),
                int(r["pruned"]),
                int(r["epochs"]),
                f"{saved:.1f} %",
                f"{r['wall_s']:.1f}",
                f"{100 * r['best']:.2f}",
                f"{100 * (r['best'] - base['best']):+.2f}",
            ]
        )
    print(f"machine: {machine()}; load average at the end: {os.getloadavg()[0]:.1f}")
    print(
        f"config: {CONFIG.relative_to(REPO)} (TPE, seed {args.seed}), {args.n_trials} trials a pruner, "
        f"{args.epochs or 'the config'} epochs a trial, CPU"
    )
    print()
    headers = [
        "pruner",
        "trials",
        "pruned",
        "epochs trained",
        "fewer epochs",
        "wall s",
        "best val acc %",
        "vs none (points)",
    ]
    print(table(headers, rows))
    print()
    saved = {p: 100.0 * (1.0 - results[p]["epochs"] / max(base["epochs"], 1)) for p in PRUNERS[1:]}
    print("fewer epochs than none: " + ", ".join(f"{p} {v:.1f} %" for p, v in saved.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
