"""Pareto search: one two-objective study with and without pruning per epoch.

``search.objectives: [val_accuracy, COST]`` (default COST ``flops``), the random sampler (each
trial is seeded with ``seed + trial number``, so both studies train the very same param sets
trial by trial: any difference is the pruning's), the same trial count, on digits and on the
CIFAR-10 sample in ``tests/data/cifar10-sample``, seeds 0 and 1. One study runs with pruner
``none``, the other with the two-objective rule of docs/pareto.md: by default the percentile
pruner keeping the top 10 % (``--percentile 10``), ``n_startup_trials`` 3, ``n_warmup_steps`` 2;
``--pruner median --startup 5 --warmup 2`` is the tool's default pruner. Training runs every
epoch (patience = epochs), so the epochs saved are the pruning's alone. Reported per pair: epochs
trained (the sum of every trial's ``epochs_run``), the front's size and its hypervolume.

Hypervolume: the area of the (cost, accuracy) plane the front dominates, bounded by the reference
point (accuracy 0, cost 1.1 x the dearest trial of the pair), divided by that box's area, so 1.0
would be accuracy 1 at cost 0 (:func:`search.study.pareto.hypervolume_2d`). The last lines say
whether the goal (>= 30 % fewer epochs, hypervolume within 2 % of the unpruned study's) is met.

    python benchmarks/pareto.py                         # 30 trials of 10 epochs a study
    python benchmarks/pareto.py --plot docs/img/pareto_benchmark.png
    python benchmarks/pareto.py --quick                 # digits, 1 seed, 4 trials of 2 epochs
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
from optuna.trial import TrialState

from benchmarks._common import REAL_DATASETS, machine, quiet_logging, table
from search.config import config_from_dict
from search.store.storage import make_storage
from search.study.pareto import accuracy, cost, hypervolume_2d
from search.study.run import RunOptions, run_study

log = logging.getLogger("pareto")

DATASETS: dict[str, dict[str, Any]] = {
    **REAL_DATASETS,
}
SPACE: dict[str, Any] = {  # digits.yaml's space, widths from tiny to its largest
    "c1": {"choices": [4, 8, 16, 32]},
    "c2": {"low": 8, "high": 64, "step": 8},
    "l1": {"low": 16, "high": 256, "log": True},
    "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    "batch_size": {"choices": [32, 64, 128]},
}
PRUNED = "pruned"  # the variant with the rule; "none" the one without
GOAL_EPOCHS, GOAL_HV = 30.0, 2.0  # percent


@dataclass
class Study:
    """One finished study: its trials' (accuracy, cost, state), epochs trained and wall time."""

    points: list[tuple[float | None, float | None, str]]
    front: list[tuple[float, float]]
    epochs: int
    pruned: int
    wall_s: float


def run_one(dataset: str, seed: int, variant: str, work: Path, args: argparse.Namespace) -> Study:
    name = f"{dataset}-{seed}-{variant}"
    pruner = {"name": "none"} if variant == "none" else {"name": args.pruner, "percentile": args.percentile}
    raw = {
        "name": name,
        "seed": seed,
        "storage": f"sqlite:///{work / 'studies.db'}",
        "artifacts_dir": str(work / "artifacts"),
        "checkpoints_dir": str(work / "checkpoints"),
        "data": {**DATASETS[dataset], "cache_dir": str(work / "cache")},
        "model": {"padding": 1},
        "train": {"epochs": args.epochs, "patience": args.epochs},
        "search": {
            "n_trials": args.n_trials,
            "objectives": ["val_accuracy", args.cost],
            "sampler": {"name": "random"},
            "pruner": {**pruner, "n_startup_trials": args.startup, "n_warmup_steps": args.warmup},
            "keep_top_k": 0,
            "space": SPACE,
        },
    }
    cfg = config_from_dict(raw)
    t0 = time.perf_counter()
    run_study(cfg, RunOptions())
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=make_storage(cfg.storage))
    trials = study.get_trials(deepcopy=False)
    return Study(
        points=[(accuracy(t), _cost(t, args.cost), t.state.name) for t in trials],
        front=[(float(accuracy(t) or 0.0), float(cost(t) or 0.0)) for t in study.best_trials],
        epochs=sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        wall_s=wall,
    )


def _cost(t: optuna.trial.FrozenTrial, name: str) -> float | None:
    value = cost(t)
    if value is None and t.user_attrs.get(name) is not None:  # a pruned trial: its recorded cost
        value = float(t.user_attrs[name])
    return value


def _best_seen(t: list[float | None]) -> float | None:
    seen = [v for v in t if v is not None]
    return max(seen) if seen else None


def hypervolume(study: Study, ref_cost: float) -> float:
    """The front's hypervolume as a fraction of the reference box (accuracy 0..1, cost 0..ref)."""
    return hypervolume_2d(study.front, (0.0, ref_cost)) / ref_cost


def plot(results: dict[tuple[str, int], dict[str, Study]], seed: int, path: Path, cost_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d for d, s in results if s == seed]
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False)
    for ax, dataset in zip(axes[0], names, strict=True):
        pair = results[(dataset, seed)]
        for variant, colour in zip(("none", PRUNED), ("#1f77b4", "#d62728"), strict=True):
            front = sorted((c, a) for a, c in pair[variant].front)
            xs = [c for c, _ in front]
            ys = [a for _, a in front]
            label = "front, no pruning" if variant == "none" else "front, pruned per epoch"
            width = 3.5 if variant == "none" else 1.3  # the unpruned front under: visible where they agree
            ax.step(xs, ys, where="post", color=colour, lw=width, label=label)
            ax.scatter(xs, ys, color=colour, s=30)
        done = [(c, a) for a, c, s in pair["none"].points if s == "COMPLETE" and a is not None and c]
        ax.scatter(
            [c for c, _ in done], [a for _, a in done], s=12, color="#bbbbbb", label="every trial (none)"
        )
        ax.set_xscale("log")
        ax.set(title=f"{dataset}, seed {seed}", xlabel=cost_name, ylabel="val_accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="digits, seed 0, 4 trials of 2 epochs")
    p.add_argument("--n-trials", type=int, default=None, help="trials a study (default 30)")
    p.add_argument("--epochs", type=int, default=None, help="epochs a trial (default 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1")
    p.add_argument("--datasets", nargs="+", choices=tuple(DATASETS), default=None)
    p.add_argument("--cost", choices=("n_params", "flops", "latency_ms"), default="flops")
    p.add_argument("--pruner", choices=("median", "percentile"), default="percentile")
    p.add_argument("--percentile", type=float, default=10.0, help="the percentile pruner's (default 10)")
    p.add_argument("--startup", type=int, default=3, help="search.pruner.n_startup_trials (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="search.pruner.n_warmup_steps (default 2)")
    p.add_argument("--plot", type=Path, default=None, help="write the fronts of the first seed as a PNG")
    args = p.parse_args(argv)
    quick = args.quick
    args.n_trials = args.n_trials or (4 if quick else 30)
    args.epochs = args.epochs or (2 if quick else 10)
    args.seeds = args.seeds or ([0] if quick else [0, 1])
    args.datasets = args.datasets or (["digits"] if quick else list(DATASETS))
    if quick:
        args.pruner, args.startup, args.warmup = "median", 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    quiet_logging()
    args = parse_args(argv)
    results: dict[tuple[str, int], dict[str, Study]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pareto-") as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                pair = {v: run_one(dataset, seed, v, Path(tmp), args) for v in ("none", PRUNED)}
                results[(dataset, seed)] = pair
                log.info("%s seed %d: %s", dataset, seed, {v: s.epochs for v, s in pair.items()})
    rows, savings, ratios = [], [], []
    for (dataset, seed), pair in results.items():
        costs = [c for s in pair.values() for _, c, _ in s.points if c is not None]
        ref = 1.1 * max(costs)
        hv = {v: hypervolume(s, ref) for v, s in pair.items()}
        saved = 100.0 * (1.0 - pair[PRUNED].epochs / max(pair["none"].epochs, 1))
        ratio = 100.0 * hv[PRUNED] / hv["none"] if hv["none"] else float("nan")
        savings.append(saved)
        ratios.append(ratio)
        for v, s in pair.items():
            figures = [s.pruned, s.epochs, len(s.front), f"{hv[v]:.4f}", f"{ref:.4g}", f"{s.wall_s:.1f}"]
            rows.append([dataset, seed, v, *figures])
        change = [f"{-saved:+.1f} %", "", f"{ratio - 100:+.2f} %", "", ""]
        rows.append([dataset, seed, "pruned vs none", "", *change])
    rule = args.pruner if args.pruner == "median" else f"percentile {args.percentile:g}"
    print(f"machine: {machine()}; load average at the end: {os.getloadavg()[0]:.1f}")
    print(
        f"objectives: [val_accuracy, {args.cost}], random sampler, {args.n_trials} trials of {args.epochs} "
        f"epochs a study, pruner {rule} (n_startup_trials {args.startup}, n_warmup_steps {args.warmup}) "
        f"vs none; reference point: accuracy 0, cost 1.1 x the dearest trial; CPU"
    )
    print()
    headers = ["dataset", "seed", "study", "pruned", "epochs", "front", "hypervolume", "ref cost", "wall s"]
    print(table(headers, rows))
    print()
    met = min(savings) >= GOAL_EPOCHS and min(ratios) >= 100.0 - GOAL_HV
    print(f"fewer epochs with pruning: mean {statistics.fmean(savings):.1f} %, least {min(savings):.1f} %")
    mean_ratio, worst = statistics.fmean(ratios), min(ratios)
    print(f"hypervolume of the pruned study: mean {mean_ratio:.2f} %, least {worst:.2f} % of unpruned")
    goal = f"goal (>= {GOAL_EPOCHS:.0f} % fewer epochs, hypervolume within {GOAL_HV:.0f} %)"
    print(f"{goal}: {'met' if met else 'missed'}")
    if args.plot is not None:
        plot(results, args.seeds[0], args.plot, args.cost)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
