"""``search dashboard``: serve optuna-dashboard on the study storage until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
from typing import Any

from search import serve
from search.cli.common import add_storage_arg, log
from search.config import StudyConfig, default_of
from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage (Ctrl-C stops)")
    add_storage_arg(p)
    p.add_argument(
        "--host", default=serve.DEFAULT_HOST, help=f"address to bind (default {serve.DEFAULT_HOST})"
    )
    p.add_argument(
        "--port", type=int, default=serve.DASHBOARD_PORT, help=f"port (default {serve.DASHBOARD_PORT})"
    )
    p.add_argument(
        "--artifact-dir",
        default=default_of(StudyConfig, "artifacts_dir"),
        help="trials' weights, downloadable from the dashboard (default storage/artifacts)",
    )
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from search.serve.dashboard import exit_process, open_dashboard
    from search.study.study import mask_url

    storage = args.storage  # the flag, a parent's hand-off, SEARCH_STORAGE or the default (checked by main)
    dashboard = open_dashboard(storage, host=args.host, port=args.port, artifact_dir=args.artifact_dir)
    print(dashboard.url, flush=True)
    log.info("serving optuna-dashboard on %s (Ctrl-C to stop)", mask_url(storage))
    dashboard.serve(watch_parent=args.exit_with_parent)
    exit_process(EXIT_OK)  # Ctrl-C / SIGTERM is how a dashboard normally ends; exits within a second
