"""``search tensorboard [STUDY]``: serve TensorBoard on the runs' logs until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
from typing import Any

from search import serve
from search.cli.common import log, wait_for_stop
from search.config import StudyConfig, check_study_name, default_of
from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tensorboard", help="serve TensorBoard on the studies' logs ([tensorboard] extra)")
    p.add_argument("study_name", metavar="STUDY", nargs="?", help="only this study's runs (default: all)")
    p.add_argument(
        "--logdir", default=default_of(StudyConfig, "tensorboard_dir"), help="log root (default %(default)s)"
    )
    p.add_argument(
        "--host", default=serve.DEFAULT_HOST, help=f"address to bind (default {serve.DEFAULT_HOST})"
    )
    p.add_argument(
        "--port", type=int, default=serve.TENSORBOARD_PORT, help=f"port (default {serve.TENSORBOARD_PORT})"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from search.engine.tensorboard import study_log_dir
    from search.serve.tensorboard import serve_logs

    logdir = args.logdir
    if args.study_name:
        check_study_name(args.study_name, "STUDY")
        logdir = study_log_dir(args.logdir, args.study_name)
    url = serve_logs(logdir, host=args.host, port=args.port)
    print(url, flush=True)
    log.info("serving TensorBoard on %s (Ctrl-C to stop)", logdir)
    wait_for_stop()
    return EXIT_OK  # Ctrl-C / SIGTERM is how a server normally ends
