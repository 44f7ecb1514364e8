"""Search efficiency: a hand grid against the tool's defaults and variants, in training epochs.

The hand grid is the seed's method: 8 points (c1 {8,16} x c2 {16,32} x l1 {32,64}, lr 1e-3,
batch 128, no pruning). Every variant searches the README's default space with the tool's
defaults except what the variant names, and may train twice the grid's epochs (the run stops
after the trial that passes that budget). Every run goes through ``search.run.run_study`` with
its own SQLite file in a temporary folder, on the CPU, with the same epochs and patience a trial
as the grid. Per dataset, seed and variant the script records the best-so-far validation
accuracy against cumulative epochs (``search.results.report.best_so_far``: trials in order of
completion, pruned ones counting the epochs they ran) and reports, as mean and spread over seeds:

- epochs until the best-so-far first reaches the grid's best (same seed), and that / the grid's epochs;
- the best at 1x and at 2x the grid's epochs (and minus the grid's best, in points);
- wall seconds a run (these depend on the machine's load; epochs do not).

The plot (one panel per dataset, one line per variant, the mean over seeds) goes to ``--plot``.
The last lines say, per dataset, whether the tool's defaults meet issue 19's goals: the grid's
best in <= 0.5x its epochs, and >= 1 point above it within 2x.

    python benchmarks/search_efficiency.py        # 3 datasets x seeds 0 1, 4 epochs, the 4 main variants
    python benchmarks/search_efficiency.py --variants defaults tpe-startup-4 hyperband patience-1
    python benchmarks/search_efficiency.py --quick --plot /tmp/eff.png   # seconds: checks that it runs

docs/BENCHMARKS.md reports the default run's cells (there with ``--jobs 6``: 3 to 4.5 minutes on 2
cores that other jobs were loading). Every variant is one entry of ``VARIANTS``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
from optuna.trial import FrozenTrial

from benchmarks._common import REAL_DATASETS, REPO, machine, quiet_logging, table
from search.config import ConfigError, config_from_dict
from search.results.report import EffortPoint, best_so_far
from search.store.storage import make_storage
from search.study.run import RunOptions, run_study
from search.study.space import grid_size
from search.study.workers import StopRequest

log = logging.getLogger("search_efficiency")

GRID: dict[str, Any] = {
    "sampler": {"name": "grid"},
    "pruner": {"name": "none"},
    "space": {
        "c1": {"choices": [8, 16]},
        "c2": {"choices": [16, 32]},
        "l1": {"choices": [32, 64]},
        "lr": 1.0e-3,
        "batch_size": 128,
    },
}

DATASETS: dict[str, dict[str, Any]] = {
    **REAL_DATASETS,
    "synthetic": {
        "dataset": "synthetic",
        "synthetic": {"shape": [1, 8, 8], "n_classes": 40, "n_samples": 1200},
    },
}

# Each variant: changes to the config's `search` (and `train`) sections on top of the defaults
# (which put the space's log-midpoint first: search.enqueue_default is on by default).
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no-midpoint": {"search": {"enqueue_default": False}},  # the defaults before issue 19
    "tpe-startup-4": {"search": {"sampler": {"n_startup_trials": 4}}},
    "sobol-startup-4": {"search": {"sampler": {"startup": "sobol", "n_startup_trials": 4}}},
    "median-early": {"search": {"pruner": {"n_startup_trials": 2, "n_warmup_steps": 1}}},
    "successive-halving": {"search": {"pruner": {"name": "successive_halving"}}},
    "hyperband": {"search": {"pruner": {"name": "hyperband"}}},
    "patience-1": {"train": {"patience": 1}},
}


DEFAULT_VARIANTS = tuple(VARIANTS)


def merge(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in change.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class EpochBudget(StopRequest):
    """Stops the run (between trials) once its trials have trained ``budget`` epochs."""

    def __init__(self, budget: int | None) -> None:
        super().__init__()
        self.budget = budget
        self.epochs = 0

    def add(self, trial: FrozenTrial) -> None:
        self.epochs += int(trial.user_attrs.get("epochs_run", 0))

    def __call__(self) -> bool:
        return super().__call__() or (self.budget is not None and self.epochs >= self.budget)


@dataclass
class Run:
    curve: list[EffortPoint]  # (trial, cumulative epochs, best so far) after each finished trial
    epochs: int
    wall_s: float
    trials: int

    @property
    def best(self) -> float:
        return self.curve[-1].best if self.curve else float("nan")

    def best_at(self, epochs: float) -> float:
        values = [p.best for p in self.curve if p.epochs <= epochs]
        return values[-1] if values else float("nan")

    def epochs_to(self, target: float) -> int | None:
        return next((p.epochs for p in self.curve if p.best >= target), None)


def run_one(name: str, raw: dict[str, Any], work: Path, budget: int | None, args: argparse.Namespace) -> Run:
    raw = merge(
        raw,
        {
            "name": name,
            "storage": f"sqlite:///{work / f'{name}.db'}",
            "artifacts_dir": str(work / "artifacts"),
            "checkpoints_dir": str(work / "checkpoints"),
            "tensorboard_dir": str(work / "tensorboard"),
        },
    )
    cfg = config_from_dict(raw)
    stop = EpochBudget(budget)
    t0 = time.perf_counter()
    run_study(cfg, RunOptions(stop=stop, on_trial=stop.add, threads=args.threads))
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=cfg.name, storage=make_storage(cfg.storage))
    curve = best_so_far(study)
    n = len(study.get_trials(deepcopy=False))
    return Run(curve, curve[-1].epochs if curve else 0, wall, n)


def base_config(dataset: str, seed: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    data = merge(DATASETS[dataset], {"cache_dir": str(work / "cache")})
    if args.quick:
        data = merge(data, {"synthetic": {"n_classes": 10, "n_samples": 200}})
    return {
        "seed": seed,
        "data": data,
        "train": {"epochs": args.epochs, "patience": args.patience},
        "search": {"n_trials": 10_000, "keep_top_k": 0},
    }


def quick_space(raw: dict[str, Any]) -> dict[str, Any]:
    """--quick: tiny nets and big batches in every run (the grid's own points included)."""
    tiny = {"c1": {"choices": [4, 8]}, "c2": 8, "l1": 16, "batch_size": 256}
    return merge(raw, {"search": {"space": tiny}})


def fmt_spread(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sd`` (sd over seeds; none with one seed)."""
    vals = [v * scale for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def summarize(
    grid: dict[int, Run], runs: dict[int, Run]
) -> tuple[list[object], dict[str, float | int | bool]]:
    """One table row for a variant on one dataset, and the goal figures."""
    ratios, firsts, at1, at2, d1, d2, walls = [], [], [], [], [], [], []
    reached = 0
    for seed, run in runs.items():
        g = grid[seed]
        first = run.epochs_to(g.best)
        if first is not None:
            reached += 1
            firsts.append(float(first))
            ratios.append(first / g.epochs)
        at1.append(run.best_at(g.epochs))
        at2.append(run.best_at(2 * g.epochs))
        d1.append(run.best_at(g.epochs) - g.best)
        d2.append(run.best_at(2 * g.epochs) - g.best)
        walls.append(run.wall_s)
    n = len(runs)
    row: list[object] = [
        f"{fmt_spread(firsts, digits=1)} ({reached}/{n})",
        fmt_spread(ratios),
        fmt_spread(at1, 100),
        fmt_spread(d1, 100),
        fmt_spread(at2, 100),
        fmt_spread(d2, 100),
        f"{statistics.fmean(walls):.1f}",
    ]
    goals = {
        "reach_all": reached == n,
        "ratio_max": max(ratios) if reached == n else float("inf"),
        "ratio_mean": statistics.fmean(ratios) if ratios else float("inf"),
        "gain2_mean": 100 * statistics.fmean(d2),
        "gain2_min": 100 * min(d2),
    }
    return row, goals


def mean_curve(runs: Sequence[Run], xs: Sequence[int]) -> list[float]:
    return [statistics.fmean(r.best_at(x) for r in runs) for x in xs]


def plot(results: dict[str, dict[str, dict[int, Run]]], path: Path, variants: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.8), squeeze=False)
    for ax, (dataset, by_variant) in zip(axes[0], results.items(), strict=True):
        grid_runs = list(by_variant["grid"].values())
        g_epochs = max(r.epochs for r in grid_runs)
        xs = list(range(0, 2 * g_epochs + 1))
        for name in ["grid", *variants]:
            runs = list(by_variant[name].values())
            top = g_epochs if name == "grid" else 2 * g_epochs
            x = [v for v in xs if v <= top]
            style = {"color": "black", "linewidth": 2.5} if name == "grid" else {"linewidth": 1.4}
            ax.step(x, mean_curve(runs, x), where="post", label=name, **style)
        grid_best = statistics.fmean(r.best for r in grid_runs)
        ax.axhline(grid_best, color="black", linestyle=":", linewidth=1)
        ax.axvline(0.5 * g_epochs, color="grey", linestyle="--", linewidth=0.8)
        lows = [v for v in mean_curve(grid_runs, [g_epochs // 4]) if not math.isnan(v)]
        highs = [r.best for runs in by_variant.values() for r in runs.values() if not math.isnan(r.best)]
        if lows and highs:
            ax.set_ylim(bottom=max(0.0, min(lows) - 0.05), top=min(1.005, max(highs) + 0.01))
        ax.set(
            title=f"{dataset} (mean of {len(grid_runs)} seed(s))",
            xlabel="cumulative training epochs",
            ylabel="best-so-far validation accuracy",
        )
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="1 seed, 2 variants, 1 epoch, tiny data and nets")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1")
    p.add_argument("--epochs", type=int, default=None, help="epochs a trial (default 4)")
    p.add_argument("--patience", type=int, default=2, help="early-stopping patience (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--jobs", type=int, default=2, help="(dataset, seed) cells run at once (default 2)")
    p.add_argument(
        "--plot", type=Path, default=REPO / "docs" / "img" / "search_efficiency.png", help="PNG to write"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.datasets = args.datasets or ["digits"]
        args.variants = args.variants or ["defaults", "no-midpoint"]
        args.seeds = args.seeds or [0]
        args.epochs = args.epochs or 1
        args.jobs = 1
    args.datasets = args.datasets or list(DATASETS)
    args.variants = args.variants or list(DEFAULT_VARIANTS)
    args.seeds = args.seeds or [0, 1]
    args.epochs = args.epochs or 4
    return args


def run_cell(dataset: str, seed: int, args: argparse.Namespace) -> dict[str, Run]:
    """The grid and every variant on one dataset with one seed (its own temporary folder)."""
    try:
        return _run_cell(dataset, seed, args)
    except ConfigError as exc:  # as text: a job's exception crosses the process pool pickled
        raise RuntimeError(f"{dataset} seed {seed}: {exc}") from None


def _run_cell(dataset: str, seed: int, args: argparse.Namespace) -> dict[str, Run]:
    quiet_logging()
    out: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="bench-eff-") as tmp:
        work = Path(tmp)
        base = base_config(dataset, seed, work, args)
        grid_raw = merge(base, {"search": GRID})
        if args.quick:
            grid_raw = quick_space(grid_raw)
        grid_raw["search"]["n_trials"] = grid_size(config_from_dict(grid_raw).search.space)
        grid = out["grid"] = run_one(f"{dataset}-grid-{seed}", grid_raw, work, None, args)
        log.warning("%s seed %d grid: best %.4f in %d epochs", dataset, seed, grid.best, grid.epochs)
        for variant in args.variants:
            raw = merge(base, VARIANTS[variant])
            if args.quick:
                raw = quick_space(raw)
            run = out[variant] = run_one(f"{dataset}-{variant}-{seed}", raw, work, 2 * grid.epochs, args)
            log.warning(
                "%s seed %d %s: best %.4f, %d epochs, %d trials, %.1f s",
                *(dataset, seed, variant, run.best, run.epochs, run.trials, run.wall_s),
            )
    return out


def main(argv: list[str] | None = None) -> int:
    quiet_logging()
    args = parse_args(argv)
    results: dict[str, dict[str, dict[int, Run]]] = {
        d: {v: {} for v in ["grid", *args.variants]} for d in args.datasets
    }
    t_start = time.perf_counter()
    cells = [(d, s) for d in args.datasets for s in args.seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            done = list(pool.map(run_cell, *zip(*cells, strict=True), [args] * len(cells)))
    else:
        done = [run_cell(d, s, args) for d, s in cells]
    for (dataset, seed), runs in zip(cells, done, strict=True):
        for variant, run in runs.items():
            results[dataset][variant][seed] = run
    total = time.perf_counter() - t_start
    print(f"machine: {machine()}; load average at the end: {os.getloadavg()[0]:.1f}")
    print(
        f"{len(args.seeds)} seed(s) {' '.join(map(str, args.seeds))}, {args.epochs} epochs a trial, "
        f"patience {args.patience}, budget 2x the grid's epochs, CPU, {args.threads} thread(s), "
        f"{args.jobs} job(s); "
        f"total {total:.0f} s"
    )
    headers = [
        "dataset",
        "variant",
        "epochs to grid best (reached)",
        "/ grid epochs",
        "best @1x %",
        "vs grid @1x",
        "best @2x %",
        "vs grid @2x",
        "wall s",
    ]
    rows: list[list[object]] = []
    verdicts: list[str] = []
    for dataset, by_variant in results.items():
        grid_runs = list(by_variant["grid"].values())
        rows.append(
            [
                dataset,
                "grid (8 points)",
                fmt_spread([float(r.epochs) for r in grid_runs], digits=1),
                "1",
                fmt_spread([r.best for r in grid_runs], 100),
                "0",
                "-",
                "-",
                f"{statistics.fmean(r.wall_s for r in grid_runs):.1f}",
            ]
        )
        for variant in args.variants:
            row, goals = summarize(by_variant["grid"], by_variant[variant])
            rows.append([dataset, variant, *row])
            if variant == "defaults":
                fast = goals["reach_all"] and goals["ratio_max"] <= 0.5
                high = goals["gain2_mean"] >= 1.0
                verdicts.append(
                    f"{dataset}: grid best within 0.5x its epochs on every seed: {'yes' if fast else 'no'} "
                    f"(worst {goals['ratio_max']:.2f}x); >= 1 point above it within 2x (mean): "
                    f"{'yes' if high else 'no'} ({goals['gain2_mean']:+.2f}, worst seed "
                    f"{goals['gain2_min']:+.2f})"
                )
    print()
    print(table(headers, rows))
    print()
    plot(results, args.plot, args.variants)
    print(f"plot: {args.plot}")
    for line in verdicts:
        print(f"goals, defaults, {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
