"""``search run CONFIG``: create or resume a study and run its trials (here or in ``--workers N``)."""

from __future__ import annotations

import argparse
from typing import Any

from search import serve
from search.cli.common import (
    add_config_args,
    add_device_arg,
    add_storage_arg,
    add_threads_arg,
    config_from_args,
    device,
    log,
    threads_flag,
)
from search.config import StudyConfig, check_inputs, mask_url
from search.errors import EXIT_OK, InputError
from search.store.urls import check_storage

WARM_START_TOP = 5


def add_study_config_args(p: argparse.ArgumentParser) -> None:
    """What ``search run`` and ``search create`` share: CONFIG, ``--set``, ``--study-name``,
    ``--storage`` (after ``SEARCH_STORAGE``, the config's) and ``--n-trials``."""
    add_config_args(p)
    p.add_argument("--study-name", help="study name (default: the config's name)")
    add_storage_arg(p, "the config's storage")
    p.add_argument("--n-trials", type=int, help="total finished trials the study should reach")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="create or resume a study and run its trials")
    add_study_config_args(p)
    p.add_argument("--timeout-s", type=float, help="stop starting trials after this many seconds")
    add_device_arg(p)
    p.add_argument(
        "--dashboard",
        action="store_true",
        help=f"serve optuna-dashboard on {serve.DEFAULT_HOST} while the study runs (stopped at the end)",
    )
    p.add_argument(
        "--dashboard-port",
        type=int,
        metavar="P",
        help=f"port for --dashboard (default {serve.DASHBOARD_PORT}; implies it)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start the study over: an existing study of this name is kept as NAME-old-TIMESTAMP",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="TensorBoard logs per trial under storage/tensorboard/STUDY/ (train.tensorboard: true)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine (default 1: in-process)"
    )
    p.add_argument("--warm-start", metavar="STUDY", help="first try the top param sets of this earlier study")
    p.add_argument(
        "--warm-start-storage", metavar="URL", help="the --warm-start study's storage (default: this one)"
    )
    p.add_argument("--warm-start-top", type=int, metavar="N", help="how many of its best trials (default 5)")
    p.add_argument(
        "--workers-per-gpu", type=int, default=1, help="how many workers may share one GPU (default 1)"
    )
    add_threads_arg(p)
    p.set_defaults(func=run)


def _worker_devices(args: argparse.Namespace) -> list[str]:
    """One device per ``--workers`` process; empty for the in-process default."""
    from search.study.workers import assign_devices

    if args.workers == 1 and args.workers_per_gpu == 1:
        return []
    return assign_devices(args.device, args.workers, args.workers_per_gpu)


def _check_warm_start_flags(args: argparse.Namespace) -> None:
    """``--warm-start-storage`` / ``--warm-start-top`` only go with ``--warm-start`` (exit 2 otherwise:
    a run the user meant to warm-start must not quietly start cold)."""
    if args.warm_start is not None:
        return
    given = {"--warm-start-storage": args.warm_start_storage, "--warm-start-top": args.warm_start_top}
    for flag, value in given.items():
        if value is not None:
            raise InputError(
                f"{flag}: given without --warm-start (got {value!r}), so nothing would be warm-started. "
                f"Fix: add --warm-start STUDY (the study to start from), or leave {flag} out"
            )


def checked_config(args: argparse.Namespace) -> StudyConfig:
    """The config of ``run`` / ``create`` with its flags, checked as far as it can be before the
    data is loaded (keys, inputs, storage, the data's counts); the preflight warnings are logged
    once, here: ``search worker`` processes do not repeat them."""
    cfg = config_from_args(args)
    check_inputs(cfg)
    if args.storage is None:  # the config's storage (--storage / SEARCH_STORAGE was checked by main)
        check_storage(cfg.storage, "storage", create=True)
    from search.study.preflight import preflight

    preflight(cfg).log_warnings()
    return cfg


def run(args: argparse.Namespace) -> int:
    _check_warm_start_flags(args)
    cfg = checked_config(args)
    from search.cli.progress import Progress, next_steps, print_outcome, print_warm_start
    from search.study.run import RunOptions, run_study

    on = device(args.device)
    devices = _worker_devices(args)
    threads = threads_flag(args)
    log.info("study %s on %s, storage %s", cfg.name, devices or on, mask_url(cfg.storage))
    wants_dashboard = args.dashboard or args.dashboard_port is not None
    progress = Progress(cfg, (args.dashboard_port or serve.DASHBOARD_PORT) if wants_dashboard else None)
    warm = None
    if args.warm_start is not None:  # read-only, before anything is created
        from search.study.warmstart import plan_warm_start

        source_storage = args.warm_start_storage or cfg.storage
        check_storage(source_storage, "--warm-start-storage", create=False)  # default: this one
        top = WARM_START_TOP if args.warm_start_top is None else args.warm_start_top
        warm = plan_warm_start(cfg, args.warm_start, source_storage, top)
    options = RunOptions(
        device=on,
        workers=devices,
        fresh=args.fresh,
        on_trial=progress.on_trial,
        around=progress.around,
        warm_start=warm,
        on_warm_start=print_warm_start,
        threads=threads,
    )
    code = print_outcome(run_study(cfg, options))
    if code == EXIT_OK:
        print(next_steps(cfg))
    return code
