"""``search app EXPORT_DIR``: the drawing-pad and upload page for an exported model (extra ``[app]``)."""

from __future__ import annotations

import argparse
from typing import Any

from search import serve
from search.cli.common import log, wait_for_stop
from search.errors import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("app", help="drawing-pad predictor for an exported model ([app] extra)")
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="a `search export` folder")
    p.add_argument(
        "--host", default=serve.DEFAULT_HOST, help=f"address to bind (default {serve.DEFAULT_HOST})"
    )
    p.add_argument("--port", type=int, default=serve.APP_PORT, help=f"port (default {serve.APP_PORT})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from search.serve.app import open_app

    app = open_app(args.export_dir, host=args.host, port=args.port)
    print(app.url, flush=True)
    log.info("serving the predictor for %s (Ctrl-C to stop)", args.export_dir)
    try:
        wait_for_stop()
    finally:
        app.close()
    return EXIT_OK
