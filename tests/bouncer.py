"""A throwaway PgBouncer in transaction pooling mode in front of the test PostgreSQL (``tests/pg.py``).

It listens on a free loopback port, trusts every client (the user list names ``postgres``), and
pools at most ``pool_size`` server connections per database. As root it runs as ``postgres``
(PgBouncer refuses root). Stopped by its PID (SIGTERM, then SIGKILL). Skipped only when the binary
is missing and ``CI`` is unset (``.ci/run`` installs it from apt).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer, _free_port

PGBOUNCER = "/usr/sbin/pgbouncer"


def pgbouncer_bin() -> str | None:
    """The pgbouncer binary (apt puts it in /usr/sbin, often not on PATH), or None."""
    return PGBOUNCER if Path(PGBOUNCER).exists() else shutil.which("pgbouncer")


class Bouncer:
    """PgBouncer on 127.0.0.1:``port`` for every database of ``server``; :meth:`url` names one."""

    def __init__(self, server: PostgresServer, binary: str, pool_size: int = 4) -> None:
        self.server = server
        self.binary = binary
        self.port = _free_port()
        self.dir = server.dir / f"pgbouncer-{self.port}"
        self.pool_size = pool_size
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Bouncer:
        self.dir.mkdir()
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            "admin_users = postgres\n"
            f"pool_mode = transaction\ndefault_pool_size = {self.pool_size}\nmax_client_conn = 500\n"
            f"logfile = {self.dir / 'log'}\n"
        )
        cmd = [self.binary, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            for f in self.dir.iterdir():
                shutil.chown(f, "postgres", "postgres")
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"pgbouncer exited: {err}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("pgbouncer did not start listening in 30 s")

    def url(self, server_url: str) -> str:
        """``server_url`` (a database on the server) through this PgBouncer."""
        return server_url.replace(f":{self.server.port}/", f":{self.port}/")

    def server_connections(self) -> int:
        """Server connections PgBouncer holds now (SHOW SERVERS on its admin console)."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=pgbouncer", autocommit=True
        ) as conn:
            conn.prepare_threshold = None
            return len(conn.execute("SHOW SERVERS").fetchall())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # by PID: runuser passes it on to pgbouncer
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def pgbouncer(server: PostgresServer, pool_size: int = 4) -> Iterator[Bouncer]:
    """A running PgBouncer in front of ``server`` for the block (RuntimeError when it cannot start)."""
    binary = pgbouncer_bin()
    if binary is None:
        raise RuntimeError("no pgbouncer binary; apt-get install pgbouncer")
    bouncer = Bouncer(server, binary, pool_size)
    try:
        yield bouncer.start()
    finally:
        bouncer.stop()


@pytest.fixture
def bouncer(postgres_server: PostgresServer) -> Iterator[Bouncer]:
    if pgbouncer_bin() is None and not os.environ.get("CI"):
        pytest.skip("pgbouncer not installed (CI installs it)")
    with pgbouncer(postgres_server) as b:
        yield b
