"""``search confirm STUDY``: re-train the top trials over new seeds or folds and name the winner."""

from __future__ import annotations

import argparse
from typing import Any

from search.cli.common import (
    add_device_arg,
    add_study_arg,
    add_threads_arg,
    device,
    use_threads,
)
from search.cli.lines import format_params
from search.config import check_study_name
from search.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("confirm", help="re-train the top trials over new seeds or folds")
    add_study_arg(p)
    p.add_argument("--top", type=int, help="how many of the best trials (default: the study's confirm.top)")
    p.add_argument("--seeds", type=int, help="new seeds per trial (default confirm.seeds)")
    p.add_argument("--folds", type=int, help="F >= 2: F-fold CV of train+val instead (default confirm.folds)")
    add_device_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=run)


def _table(result: Any) -> list[str]:
    winner = result.winner
    rows = [(r, format_params(r.params)) for r in result.rows]
    width = max([len("params"), *(len(p) for _, p in rows)])
    lines = [f"{'trial':>5}  {'params':<{width}}  {'study':>6}  {'mean ± std':<15}  {'n':>2}"]
    for r, params in rows:
        mean = "-" if not r.n else f"{r.mean:.4f} ± " + ("-" if r.n < 2 else f"{r.std:.4f}")
        mark = "  <- confirmed winner" if winner is not None and r.trial == winner.trial else ""
        failed = f" ({r.failed} failed)" if r.failed else ""
        cells = f"{r.trial:>5}  {params:<{width}}  {r.study_value:.4f}  {mean:<15}  {r.n:>2}"
        lines.append(cells + failed + mark)
    return lines


def _print_run(folds: int) -> Any:
    def on_run(record: Any, done: int, total: int) -> None:
        what = f"fold {record.fold + 1}/{folds}" if record.fold is not None else f"seed {record.seed}"
        value = "failed" if record.value is None else f"val {record.value:.4f}"
        print(
            f"run {done}/{total}: trial {record.trial} {what}: {value} (best epoch {record.best_epoch} "
            f"of {record.epochs_run}, {record.seconds:.1f}s)",
            flush=True,
        )

    return on_run


def run(args: argparse.Namespace) -> int:
    check_study_name(args.study_name, "STUDY")
    from search.results.confirm import load_for_confirm, run_confirm, settings
    from search.study.workers import StopRequest

    on = device(args.device)
    study, cfg = load_for_confirm(args.study_name, args.storage)
    s = settings(cfg, args.top, args.seeds, args.folds)
    use_threads(args, cfg)
    print(f"confirm {args.study_name}: top {s.top} trial(s), {s.describe()} each, on {on}", flush=True)
    stop = StopRequest()
    with stop.installed():
        result = run_confirm(study, cfg, s, on, should_stop=stop, on_run=_print_run(s.folds))
    if result.interrupted:
        print(
            f"confirm {args.study_name}: interrupted with {result.runs_done}/{result.runs_total} runs "
            "recorded; run the same command again to continue"
        )
        return EXIT_INTERRUPTED
    if result.runs_this_call < result.runs_done:
        print(f"({result.runs_done - result.runs_this_call} run(s) were recorded by an earlier confirm)")
    for line in _table(result):
        print(line)
    print(f"confirm: {result.summary['verdict']}")
    print(f"confirm: {result.csv_path}; summary stored on the study (user attr 'confirm')")
    return EXIT_OK if result.winner is not None else EXIT_FAILED
