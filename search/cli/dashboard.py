"""``search dashboard``: serve optuna-dashboard on the study storage until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
from typing import Any

from search import serve
from search.cli.common import DEFAULT_STORAGE, log
from search.config import StudyConfig, default_of
from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage (Ctrl-C stops)")
    p.add_argument("--storage", help=f"storage URL (default {DEFAULT_STORAGE})")
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
    from search.serve.dashboard import STORAGE_ENV, exit_process, open_dashboard
    from search.study.study import mask_url

    storage = args.storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    if not args.storage and os.environ.get(STORAGE_ENV):  # --storage itself was checked by main
        from search.store.urls import check_storage

        check_storage(storage, STORAGE_ENV, create=False)
    dashboard = open_dashboard(storage, host=args.host, port=args.port, artifact_dir=args.artifact_dir)
    print(dashboard.url, flush=True)
    log.info("serving optuna-dashboard on %s (Ctrl-C to stop)", mask_url(storage))
    dashboard.serve(watch_parent=args.exit_with_parent)
    exit_process(EXIT_OK)  # Ctrl-C / SIGTERM is how a dashboard normally ends; exits within a second
