"""``search worker --study-name NAME``: join an existing study (any machine) and run its trials."""

from __future__ import annotations

import argparse
import os
from typing import Any

from search.cli.common import add_device_arg, add_storage_arg, add_threads_arg, device, log, threads_flag
from search.cli.lines import trial_line
from search.config import check_study_name, with_overrides
from search.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, InputError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("worker", help="join an existing study and run its trials (any machine)")
    p.add_argument("--study-name", required=True, help="the study to join")
    add_storage_arg(p, "none: the URL must be given", "the study's storage URL")
    add_device_arg(p)
    p.add_argument("--n-trials", type=int, help="total finished trials (default: the study's config)")
    p.add_argument("--timeout-s", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--shared-gpu", action="store_true", help=argparse.SUPPRESS)  # set by --workers-per-gpu
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Join an existing study (its config is stored in it) and run trials until its total."""
    from search.store.urls import STORAGE_ENV
    from search.study.run import Outcome, RunOptions, run_study
    from search.study.study import load_study, make_storage
    from search.study.workers import StopRequest, worker_config

    check_study_name(args.study_name, "--study-name")
    url = args.storage  # the flag, a parent's hand-off or SEARCH_STORAGE (search.cli.storage.resolve_storage)
    if not url:
        raise InputError(f"--storage: missing (got nothing). Fix: pass --storage URL or set {STORAGE_ENV}")
    study = load_study(
        args.study_name, make_storage(url, what=args.storage_from, create=False, heartbeat=False)
    )
    cfg = with_overrides(worker_config(study, args.n_trials, args.timeout_s), {"storage": url})
    on = device(args.device)
    log.info("worker pid %d on %s joins study %s", os.getpid(), on, cfg.name)
    options = RunOptions(
        device=on,
        join=True,
        stop=StopRequest(parent_pid=args.parent_pid),
        ignore_sigint=args.parent_pid is not None,
        release_memory=args.shared_gpu,
        threads=threads_flag(args),
        on_trial=lambda trial: print(trial_line(trial, cfg.search.cost), flush=True),
    )
    result = run_study(cfg, options)
    interrupted = result.outcome is Outcome.INTERRUPTED
    print(
        f"worker {os.getpid()}: {result.started} trial(s) run; study {cfg.name}: "
        f"{result.finished}/{cfg.search.n_trials} finished" + (" (interrupted)" if interrupted else "")
    )
    if interrupted:
        return EXIT_INTERRUPTED
    if result.outcome is Outcome.FAILURE_BUDGET:
        print(f"worker {os.getpid()}: {result.stop_message}")
        return EXIT_FAILED
    return EXIT_OK if result.outcome is Outcome.COMPLETED else EXIT_FAILED
