"""``search tensorboard``: serve the TensorBoard logs that trials and fine-tuning runs write
(:mod:`search.engine.tensorboard`), on loopback by default."""

from __future__ import annotations

import logging
from pathlib import Path

from search import serve
from search.engine.tensorboard import EXTRA_HINT, TensorBoardError
from search.serve import network

log = logging.getLogger(__name__)

DEFAULT_HOST = serve.DEFAULT_HOST
DEFAULT_PORT = serve.TENSORBOARD_PORT


def server_warning(host: str, port: int) -> str | None:
    """The warning to log when ``host`` makes TensorBoard reachable from other machines, else None."""
    return network.exposure_warning(
        "TensorBoard", "can read your runs (there is no authentication)", host, port
    )


def serve_logs(logdir: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """Start TensorBoard on ``logdir`` in this process (a background thread); returns its URL.

    Raises :class:`TensorBoardError` when the extra is missing, ``logdir`` holds no runs, or the
    port cannot be bound. The server lives as long as the process.
    """
    from search.serve.dashboard import DashboardError, check_port

    try:
        from tensorboard import program
    except ImportError as exc:
        raise TensorBoardError(
            f"search tensorboard needs the tensorboard package, which is not installed. Fix: {EXTRA_HINT}"
        ) from exc
    path = Path(logdir)
    if not path.is_dir():
        raise TensorBoardError(
            f"no TensorBoard logs at {path}. Fix: run a study with `search run CONFIG --tensorboard` "
            "(or train.tensorboard: true) first, or pass --logdir"
        )
    try:
        check_port(host, port)
    except DashboardError as exc:
        raise TensorBoardError(str(exc).replace("another dashboard?", "another server?")) from exc
    warning = server_warning(host, port)
    if warning:
        log.warning("%s", warning)
    board = program.TensorBoard()
    argv = [
        "tensorboard",
        "--logdir",
        str(path),
        "--host",
        host.strip("[]"),
        "--port",
        str(port),
        "--load_fast",
        "false",
        "--reload_interval",
        "5",
    ]
    board.configure(argv=argv)
    try:
        url: str = board.launch()
    except program.TensorBoardServerException as exc:  # e.g. the port was taken meanwhile
        raise TensorBoardError(
            f"--port {port}: {exc}. Fix: pick another port, e.g. --port {port + 1}"
        ) from exc
    return url
