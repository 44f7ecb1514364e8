"""``search status``: trials per state and the best trial of each study; its running trials."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from search.cli.common import add_storage_arg
from search.cli.lines import format_params, value_text
from search.config import check_study_name
from search.errors import EXIT_OK, InputError

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="list studies: trials per state and the best trial")
    add_storage_arg(p)
    p.add_argument("--study-name", help="only this study")
    p.add_argument(
        "--fail-stale",
        action="store_true",
        help="mark stale RUNNING trials (no recent heartbeat) FAIL with reason 'stale' and re-queue them",
    )
    p.set_defaults(func=run)


def _numbers(numbers: Sequence[int]) -> str:
    return ", ".join(f"#{n}" for n in numbers)


def _age(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:.0f}s ago"


def _print_running(study: Any, storage: Any, fail_stale: bool) -> None:
    """The study's RUNNING trials (worker host, pid, device, heartbeat); what --fail-stale did."""
    from search.study.running import check_running

    check = check_running(study, storage, fail_stale=fail_stale)
    if not check.trials:
        return
    print(f"  running trials of {study.study_name} (stale: no heartbeat for {check.grace_s}s):")
    for r in check.trials:
        flag = "  STALE" if r.stale else ""
        print(
            f"    trial {r.number:>4} host={r.host} pid={r.pid} device={r.device} "
            f"started={_age(r.age_s)} heartbeat={_age(r.heartbeat_age_s)}{flag}"
        )
    if check.failed is not None:
        if check.failed.requeued:
            print(f"  marked FAIL (reason 'stale') and re-queued: {_numbers(check.failed.requeued)}")
        if check.failed.not_requeued:
            print(
                f"  marked FAIL (reason 'stale'), not re-queued (retried search.max_retry={check.max_retry} "
                f"times already; checkpoint deleted): {_numbers(check.failed.not_requeued)}"
            )
    elif check.stale:
        print(
            f"  {len(check.stale)} stale trial(s); `search status --fail-stale` marks them FAIL and "
            "re-queues them"
        )


def _study_names(args: argparse.Namespace, storage: Any) -> list[str]:
    import optuna

    from search.study.study import mask_url

    names = sorted(optuna.get_all_study_names(storage))
    if not args.study_name:
        return names
    if args.study_name not in names:
        raise InputError(
            f"no study named {args.study_name!r} in {mask_url(args.storage)} "
            f"(studies: {', '.join(names) or 'none'})"
        )
    return [args.study_name]


def run(args: argparse.Namespace) -> int:
    import optuna

    from search.study.failures import fail_summary
    from search.study.pareto import cost_name, front_summary
    from search.study.study import best_trial, make_storage, mask_url, over_budget_counts, state_counts

    if args.study_name:
        check_study_name(args.study_name, "--study-name")
    storage = make_storage(args.storage, create=False, heartbeat=False)
    names = _study_names(args, storage)
    if not names:
        print(f"no studies in {mask_url(args.storage)}")
        return EXIT_OK
    print(f"{'study':<24} " + " ".join(f"{s.lower():>8}" for s in STATES) + "  best")
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = state_counts(trials)
        best = best_trial(study)
        cost = cost_name(study)
        value = "-" if best is None else value_text(best, cost)
        best_text = "-" if best is None else f"#{best.number} {value} {format_params(best.params)}"
        print(f"{name:<24} " + " ".join(f"{counts[s]:>8}" for s in STATES) + f"  {best_text}")
        front = front_summary(study)
        if front is not None:  # two objectives: the best above is the front's most accurate member
            print("\n".join(f"{'':<24} {line}" for line in front.lines()))
        for reason, count in fail_summary(trials):
            print(f"{'':<24} failed x{count}: {reason}")
        for budget, count in over_budget_counts(trials).items():
            print(f"{'':<24} over budget x{count}: search.constraints.{budget} (pruned before training)")
        _print_running(study, storage, args.fail_stale)
    return EXIT_OK
