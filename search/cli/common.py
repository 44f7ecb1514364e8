"""What several commands share: the config from a command line, flags, waiting for Ctrl-C.

Imports nothing heavy at module level: ``search validate`` and ``search --help`` load neither torch
nor optuna.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from search.config import StudyConfig, check_study_name, default_of, load_config
from search.errors import InputError

log = logging.getLogger("search")

DEFAULT_STORAGE: str = default_of(StudyConfig, "storage")
DEVICE_HELP = "auto | cpu | cuda | cuda:N (default auto)"


# --------------------------------------------------------------------------- flags


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The CONFIG argument and repeatable ``--set KEY=VALUE``."""
    p.add_argument("config", help="study config (YAML)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=2 (repeatable)",
    )


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads per process (default: train.threads, else free cores // local workers)",
    )


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_storage_arg(
    p: argparse.ArgumentParser, fallback: str = DEFAULT_STORAGE, what: str = "storage URL"
) -> None:
    """``--storage URL``, None when absent (:func:`search.cli.storage.resolve_storage` fills it in)."""
    p.add_argument(
        "--storage", metavar="URL", help=f"{what} (default: $SEARCH_STORAGE when set, else {fallback})"
    )


def add_study_arg(p: argparse.ArgumentParser) -> None:
    """STUDY and ``--storage URL`` (default: ``SEARCH_STORAGE``, else the default storage)."""
    p.add_argument("study_name", metavar="STUDY")
    add_storage_arg(p)


def _quote(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML: strings stay strings


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The config file with ``--set`` overrides and the flags that stand for config keys.

    Raises:
        ConfigError: a bad file, key or value.
    """
    sets = list(args.set or [])
    flag_fields = {
        "study_name": "name",
        "storage": "storage",
        "n_trials": "search.n_trials",
        "timeout_s": "search.timeout_s",
    }
    for attr, key in flag_fields.items():
        value = getattr(args, attr, None)
        if value is not None:
            sets.append(f"{key}={_quote(value)}")
    if getattr(args, "tensorboard", False):
        sets.append("train.tensorboard=true")
    return load_config(args.config, sets)


def threads_flag(args: argparse.Namespace) -> int | None:
    """``--threads`` checked (exit 2 before anything is written); None when not given."""
    flag: int | None = getattr(args, "threads", None)
    if flag is not None and flag < 1:
        raise InputError(
            f"--threads: must be >= 1 (got {flag}). "
            "Fix: use e.g. --threads 1, or leave it out for free cores // local workers"
        )
    if flag is not None:
        from search.engine.threads import check_threads

        check_threads(flag, "--threads")
    return flag


def use_threads(args: argparse.Namespace, cfg: StudyConfig) -> None:
    """The thread policy for a command that trains in this process (finetune, confirm)."""
    from search.engine.threads import use_threads as apply_policy

    apply_policy(1, flag=threads_flag(args), configured=cfg.train.threads)


def device(flag: str) -> Any:
    """The torch device ``--device`` names (InputError naming the flag when there is none)."""
    from search.engine.device import resolve_device

    try:
        return resolve_device(flag)
    except ValueError as exc:  # resolve_device's own message, said about the flag
        raise InputError(f"--device: {exc}. Fix: use --device cpu or auto") from exc


def results_study(args: argparse.Namespace) -> Any:
    """The existing study ``STUDY`` in ``--storage`` (report, export, finetune)."""
    from search.study.stored import open_existing

    check_study_name(args.study_name, "STUDY")
    return open_existing(args.study_name, args.storage)


# --------------------------------------------------------------------------- servers


def wait_for_stop() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM; a server running in another thread keeps serving."""
    import signal
    import threading

    stopped = threading.Event()

    def stop(_signum: int, _frame: Any) -> None:
        stopped.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
