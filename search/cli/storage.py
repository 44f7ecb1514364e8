"""Where a command's storage URL comes from, and its check before anything runs.

Precedence, for every command that takes ``--storage``: the flag, then ``SEARCH_STORAGE`` (a
parent's hand-off first: ``search run --workers`` / ``--dashboard`` give their children the URL
they resolved), then the config's ``storage`` (``run``, ``create``), then the default URL.
"""

from __future__ import annotations

import argparse
import os

from search.cli.common import DEFAULT_STORAGE
from search.store.urls import DASHBOARD_STORAGE_ENV, STORAGE_ENV, WORKER_STORAGE_ENV

STORAGE_FLAGS = {"storage": "--storage", "warm_start_storage": "--warm-start-storage"}
# the commands that create their --storage; the rest only read
WRITES_STORAGE = {"run": ("storage",), "create": ("storage",)}
CONFIG_STORAGE = ("run", "create")  # no --storage, no SEARCH_STORAGE: the config's storage
# A parent's hand-off (`search run --workers`, `--dashboard`): its URL wins over an inherited SEARCH_STORAGE.
HANDOFF_ENV = {"worker": WORKER_STORAGE_ENV, "dashboard": DASHBOARD_STORAGE_ENV}
NO_DEFAULT_STORAGE = ("worker",)  # joins a study somewhere: the URL must be given


def resolve_storage(args: argparse.Namespace) -> None:
    """``args.storage`` for a command that takes ``--storage``, by precedence: the flag, then
    ``SEARCH_STORAGE`` (a parent's hand-off first), then the config's ``storage`` (``run``,
    ``create``: left None here) or the default URL. ``args.storage_from`` names its source, for
    error messages."""
    if not hasattr(args, "storage"):
        return
    args.storage_from = STORAGE_FLAGS["storage"]
    if args.storage is not None:
        return
    for name in (HANDOFF_ENV.get(args.command), STORAGE_ENV):
        value = os.environ.get(name) if name else None
        if value:
            args.storage, args.storage_from = value, name
            return
    if args.command not in CONFIG_STORAGE + NO_DEFAULT_STORAGE:
        args.storage = DEFAULT_STORAGE


def check_storage_flags(args: argparse.Namespace) -> None:
    """Every storage URL flag of the command checked before anything runs (exit 2 naming the flag,
    or the environment variable the URL came from)."""
    from search.store.urls import check_storage  # no optuna: validate and --help stay light

    for attr, flag in STORAGE_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None and value != DEFAULT_STORAGE:  # a default is checked when it is opened
            create = attr in WRITES_STORAGE.get(getattr(args, "command", ""), ())
            what = getattr(args, "storage_from", flag) if attr == "storage" else flag
            check_storage(value, what, create=create)
