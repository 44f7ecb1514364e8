"""optuna-dashboard on the study storage and the weights' artifact directory, loopback by default.

:func:`open_dashboard` opens the storage (SQLite through :func:`search.store.storage.make_storage`: WAL and
a busy timeout, so the dashboard reads while trials write), binds the port (a port in use is a
:class:`DashboardError`, raised before anything is served) and returns a :class:`Dashboard`;
:meth:`Dashboard.serve` blocks until SIGINT (Ctrl-C) or SIGTERM and then closes the socket.
:func:`background_dashboard` runs ``python -m search dashboard`` beside a study and stops it when
the study ends. Binding anything other than a loopback address logs a warning: the dashboard has
no authentication and can delete studies. This module logs; it never prints.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from types import FrameType
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import optuna
import sqlalchemy.exc
import yaml

from search import serve
from search.config import StudyConfig, default_of
from search.engine.threads import child_env
from search.errors import InputError
from search.serve import network
from search.serve.network import is_all_interfaces
from search.store.urls import DASHBOARD_STORAGE_ENV

log = logging.getLogger(__name__)

DEFAULT_HOST = serve.DEFAULT_HOST
DEFAULT_PORT = serve.DASHBOARD_PORT
DEFAULT_ARTIFACT_DIR: str = default_of(StudyConfig, "artifacts_dir")
READY_TIMEOUT_S = 120.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STORAGE_ENV = DASHBOARD_STORAGE_ENV  # how a child dashboard gets the URL (kept out of `ps`)
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.5


class DashboardError(InputError):
    """The dashboard cannot start: port in use or not allowed, unknown host, storage problems."""


# --------------------------------------------------------------------------- addresses


def exposure_warning(host: str, port: int) -> str | None:
    """The warning to log when ``host`` makes the dashboard reachable from other machines, else None."""
    return network.exposure_warning(
        "optuna-dashboard",
        "can read, edit and delete your studies (there is no authentication)",
        host,
        port,
        keep="To watch a remote machine, keep",
    )


def base_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens (wildcard hosts are reached through loopback)."""
    name = host.strip("[]")
    if is_all_interfaces(name):
        name = "::1" if name == "::" else "127.0.0.1"
    if ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{port}/dashboard"


def study_url(base: str, study_id: int) -> str:
    """The dashboard page of one study (``/dashboard/studies/<id>``; its trials: ``.../trials``)."""
    return f"{base}/studies/{study_id}"


# --------------------------------------------------------------------------- study note


def config_note(config: Mapping[str, Any]) -> str:
    """Markdown for the study's dashboard note: the whole config as YAML.

    The dashboard cuts attribute values at 1024 characters, so the ``config`` user attr alone
    does not show a whole config; the note (the study's "Note" tab) does.
    """
    body = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)
    return (
        "### Study config\n\n"
        "The config this study was started with (also the study's user attr `config`).\n\n"
        f"```yaml\n{body}```\n"
    )


def save_config_note(study: optuna.Study, config: Mapping[str, Any]) -> None:
    """Write :func:`config_note` as the study's dashboard note unless it already has one."""
    from optuna_dashboard import get_note, save_note

    if not get_note(study):
        save_note(study, config_note(config))


def save_config_notes(storage: optuna.storages.BaseStorage) -> None:
    """A config note on every study that has a stored config and no note yet.

    Written here, when a dashboard opens, rather than when a study is created: so `search run`
    without ``--dashboard`` never imports optuna_dashboard (seconds of start-up).
    """
    from search.store.storage import CONFIG_ATTR

    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        config = summary.user_attrs.get(CONFIG_ATTR)
        if not isinstance(config, Mapping):
            continue
        try:
            save_config_note(optuna.load_study(study_name=summary.study_name, storage=storage), config)
        except sqlalchemy.exc.OperationalError as exc:  # e.g. a read-only storage: show it without notes
            log.warning("cannot write the config note of study %s: %s", summary.study_name, exc.orig)


# --------------------------------------------------------------------------- server


class _Server(ThreadingMixIn, WSGIServer):
    """Threaded wsgiref server (as optuna-dashboard's own CLI uses), quiet about dropped clients."""

    daemon_threads = True
    block_on_close = False
    watch_parent: int | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            log.debug("client %s went away: %s", client_address, exc)
            return
        log.warning("error while serving %s", client_address, exc_info=True)

    def service_actions(self) -> None:
        if self.watch_parent is not None and os.getppid() != self.watch_parent:
            log.warning("the process that started the dashboard is gone; stopping")
            raise _Stop


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log, not to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Stop(Exception):
    """Raised in the serving thread to end :meth:`Dashboard.serve` (SIGTERM, parent gone)."""


def _bind(host: str, port: int, port_flag: str = "--port") -> _Server:
    server_class = _Server6 if ":" in host.strip("[]") else _Server
    try:
        return server_class((host.strip("[]"), port), _QuietHandler)
    except socket.gaierror as exc:
        raise DashboardError(
            f"--host {host!r}: not an address of this machine ({exc}). Fix: use --host {DEFAULT_HOST}"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise DashboardError(
                f"{port_flag} {port}: port already in use on {host} (another dashboard?). "
                f"Fix: stop that process or pick another port, e.g. {port_flag} {port + 1}"
            ) from exc
        if exc.errno == errno.EACCES:
            raise DashboardError(
                f"{port_flag} {port}: permission denied (ports below 1024 need root). "
                f"Fix: use {port_flag} {DEFAULT_PORT}"
            ) from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise DashboardError(
                f"--host {host!r}: not an address of this machine. Fix: use --host {DEFAULT_HOST}"
            ) from exc
        raise DashboardError(f"cannot listen on {host}:{port}: {exc}") from exc


def check_port(host: str, port: int, port_flag: str = "--port") -> None:
    """Raise :class:`DashboardError` now if ``host:port`` cannot be bound (e.g. already in use)."""
    _check_port_range(port, port_flag)
    _bind(host, port, port_flag).server_close()


def _check_port_range(port: int, port_flag: str = "--port") -> None:
    if not 0 < port < 65536:
        raise DashboardError(
            f"{port_flag} {port}: not a TCP port. Fix: use a port in 1..65535, e.g. {DEFAULT_PORT}"
        )


class Dashboard:
    """A bound, not yet serving optuna-dashboard; :meth:`serve` runs it until Ctrl-C or SIGTERM."""

    def __init__(self, server: _Server, url: str) -> None:
        self.server = server
        self.url = url

    @property
    def port(self) -> int:
        port: int = self.server.server_address[1]
        return port

    def serve(self, *, watch_parent: bool = False) -> None:
        """Serve until SIGINT (Ctrl-C), SIGTERM or, with ``watch_parent``, the parent's exit.

        Returns normally in each case, with the socket closed. Signals are handled only when
        called from the main thread; from another thread, stop it with ``server.shutdown()``.
        """
        self.server.watch_parent = os.getppid() if watch_parent else None
        previous: dict[int, Any] = {}
        if _in_main_thread():  # also when started with SIGINT ignored (a background shell job)
            previous = {sig: signal.signal(sig, self._stop_soon) for sig in STOP_SIGNALS}
        try:
            self.server.serve_forever(poll_interval=POLL_INTERVAL_S)
            log.info("dashboard stopped")
        except (KeyboardInterrupt, _Stop):
            log.info("dashboard stopped")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.server.server_close()

    def close(self) -> None:
        self.server.server_close()

    def _stop_soon(self, signum: int, frame: FrameType | None) -> None:
        # Not an exception raised wherever the main thread is (it may be starting a request's
        # thread): serve_forever returns at its next poll. shutdown() waits for that, so not here.
        import threading

        threading.Thread(target=self.server.shutdown, daemon=True).start()


def exit_process(code: int) -> NoReturn:
    """End a standalone dashboard process now, skipping the interpreter's teardown.

    optuna-dashboard loads some 3000 modules (scipy, sklearn, pandas for its plots); unloading
    them took 3-8 s on a busy machine after SIGTERM, with nothing left to clean up: the socket is
    closed and the storage is only read. Logs and stdout are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


_ARTIFACT_PATH = re.compile(r"^/artifacts/\d+/(?:\d+/)?(?P<id>[0-9a-fA-F-]+)/?$")


def missing_artifacts_as_404(app: Any, artifact_dir: Path) -> Any:
    """WSGI middleware: a listed artifact whose file is gone answers 404 with a reason, not a 500.

    Weights of trials beaten out of the study's top ``keep_top_k`` are deleted, but their
    artifact entries stay in the study (the dashboard still lists them).
    """

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        match = _ARTIFACT_PATH.match(environ.get("PATH_INFO", ""))
        if match and not (artifact_dir / match["id"]).is_file():
            body = (
                b"Not found: this weights file was removed (the trial fell out of the study's "
                b"top keep_top_k) or the dashboard runs with another --artifact-dir.\n"
            )
            start_response(
                "404 Not Found",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return app(environ, start_response)

    return wrapped


def open_dashboard(
    storage_url: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    artifact_dir: str | Path = DEFAULT_ARTIFACT_DIR,
) -> Dashboard:
    """Open the storage (it must exist), build optuna-dashboard's app and bind ``host:port``.

    Raises :class:`DashboardError` for a bad port or host and :class:`search.store.storage.StorageError`
    for a storage that cannot be opened; nothing is served or created before this returns.
    """
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    from search.store.storage import make_storage

    _check_port_range(port)
    storage = make_storage(storage_url, create=False, heartbeat=False)
    save_config_notes(storage)
    artifacts = Path(artifact_dir)
    server = _bind(host, port)
    app = optuna_dashboard.wsgi(storage, artifact_store=FileSystemArtifactStore(str(artifacts)))
    server.set_app(missing_artifacts_as_404(app, artifacts))
    warning = exposure_warning(host, port)
    if warning:
        log.warning("%s", warning)
    if not artifacts.is_dir():
        log.warning(
            "artifact dir %s does not exist (yet): trials' weights cannot be downloaded. "
            "Run from the directory that holds storage/, or pass --artifact-dir",
            artifacts,
        )
    bound_port: int = server.server_address[1]
    return Dashboard(server, base_url(host, bound_port))


# --------------------------------------------------------------------------- beside a study


@contextlib.contextmanager
def background_dashboard(
    storage_url: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    artifact_dir: str | Path = DEFAULT_ARTIFACT_DIR,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[str]:
    """Run ``python -m search dashboard`` in a child process; yields its base URL once it listens.

    The child is stopped (SIGTERM, then SIGKILL after a grace period) when the block exits, by
    return, exception or Ctrl-C; it also stops by itself if this process dies. Its warnings and
    errors go to this process's stderr. Raises :class:`DashboardError` if it does not start.
    """
    import search

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)  # the study is about to write there
    package_root = str(Path(search.__file__).resolve().parents[1])
    env = child_env(1, keep_user=True)  # it trains nothing: one thread, unless the user set OMP_NUM_THREADS
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env[STORAGE_ENV] = storage_url  # not on the command line, where a password would be public
    cmd = [
        sys.executable,
        "-m",
        "search",
        "-q",
        "dashboard",
        "--host",
        host,
        "--port",
        str(port),
        "--artifact-dir",
        str(artifact_dir),
        "--exit-with-parent",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        url = _wait_for_url(proc, ready_timeout_s)
        log.info("optuna-dashboard (pid %d) at %s", proc.pid, url)
        yield url
    finally:
        stop_process(proc)


def _wait_for_url(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().strip()
            if line.startswith("http"):
                return line
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    code = proc.poll()
    if code is None:
        raise DashboardError(f"optuna-dashboard did not start within {timeout_s:.0f}s")
    raise DashboardError(f"optuna-dashboard exited with code {code} before serving (its error is above)")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM ``proc``, wait, SIGKILL if it lingers; returns its exit code."""
    early = proc.poll()
    if early not in (None, 0):
        log.warning("optuna-dashboard (pid %d) had already exited with code %d", proc.pid, early)
    if early is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("optuna-dashboard (pid %d) ignored SIGTERM; killing it", proc.pid)
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode
