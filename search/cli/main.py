"""The dispatcher: ``search [-v|-q] COMMAND ...``, logging, and exit codes.

Each command is a module of this package with ``add_parser(subparsers)`` and ``run(args) -> int``.
An error the tool raises on purpose (:class:`search.errors.SearchError`) becomes one ``error: ...``
line on stderr and its ``exit_code``: 0 ok, 1 failed run, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from search.cli import (
    app,
    confirm,
    create,
    dashboard,
    export,
    finetune,
    predict,
    report,
    run,
    schema,
    status,
    tensorboard,
    validate,
    worker,
)
from search.cli.common import DEFAULT_STORAGE
from search.cli.storage import check_storage_flags, resolve_storage
from search.errors import EXIT_INTERRUPTED, SearchError

DISTRIBUTION = "convnet-search"  # the name in pyproject.toml; `search --version` reads its metadata
COMMANDS = (
    *(run, create, worker, validate, schema, status, dashboard),
    *(report, export, predict, confirm, finetune, tensorboard, app),
)
NO_OPTUNA = ("validate", "schema")  # commands that never import optuna (start-up time)


def setup_logging(verbosity: int, *, optuna_logs: bool = True) -> None:
    """Log lines on stderr: WARNING with ``-q``, INFO by default, DEBUG with ``-v``; Optuna's
    own messages go through the same handler (WARNING and up unless ``-v``)."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    warnings.showwarning = _log_library_warning
    if not optuna_logs:
        return
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.WARNING if verbosity <= 0 else logging.INFO)


WARNINGS_LOGGER = "search.warnings"


def _log_library_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Python warnings, which only libraries raise here (this package logs its own), as one DEBUG
    line: the user cannot act on them (Optuna's ExperimentalWarning for QMC, CMA-ES not using
    constraints, a grid value out of range), and those they can are logged in our words where
    they arise (``search validate`` and ``search run`` warn about the config)."""
    text = " ".join(str(message).split()) or category.__name__
    parts = Path(filename).with_suffix("").parts
    origin = ".".join(parts[parts.index("site-packages") + 1 :]) if "site-packages" in parts else parts[-1]
    logging.getLogger(WARNINGS_LOGGER).debug("%s (%s:%d): %s", category.__name__, origin, lineno, text)


def package_version() -> str:
    """The installed distribution's version; the package's own when it runs from a plain checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        from search import __version__

        return __version__


STORAGE_EPILOG = (
    "Storage: a command that takes --storage uses the flag, else $SEARCH_STORAGE, else the config's "
    f"storage (run, create), else {DEFAULT_STORAGE}."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``search`` parser with every command's subparser (in the order ``search -h`` lists them)."""
    parser = argparse.ArgumentParser(
        prog="search",
        description="Hyperparameter search for image-classification ConvNets.",
        epilog=STORAGE_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``search ARGV`` (default: ``sys.argv[1:]``) and return its exit code."""
    from search.engine.threads import passive_wait

    passive_wait()  # before anything imports torch (OpenMP reads it then)
    args = build_parser().parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose, optuna_logs=args.command not in NO_OPTUNA)
    try:
        resolve_storage(args)
        check_storage_flags(args)
        code: int = args.func(args)
    except SearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code
