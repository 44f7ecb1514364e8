"""Study storage: open Optuna's RDB storage (SQLite or PostgreSQL) and find studies in it.

SQLite (the default, one machine) gets WAL mode, a 60 s busy timeout and ``synchronous=NORMAL``
so several processes and the dashboard can share it; concurrent first starts on one new file are
serialised by a lock on its folder. A PostgreSQL URL lets workers on many machines join one study,
directly or through PgBouncer in transaction pooling mode (psycopg's prepared statements are off).
The lowest floor next to ``config``: it knows nothing of trials, objectives or the dashboard.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.event
import sqlalchemy.exc
import sqlalchemy.pool
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from search.config import SearchConfig, default_of, mask_url
from search.store.records import CONFIG_ATTR, DATA_ATTR
from search.store.urls import SQLITE_TIMEOUT_S, StorageError, check_storage, give, same_database

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S: int = default_of(SearchConfig, "heartbeat_interval_s")
GRACE_PERIOD_S: int = default_of(SearchConfig, "grace_period_s")
MAX_RETRY: int = default_of(SearchConfig, "max_retry")
# Server databases whose tables this process has created or checked: opening one again skips both
# (each costs a dozen catalog queries that every worker would repeat).
_READY: set[str] = set()
# One connection pool per server database and process: every storage this process opens on it
# (a worker reads the study's config, then runs it with heartbeats) shares its connections, so a
# worker holds one server connection, not one or two per storage it opened.
_POOLS: dict[str, sqlalchemy.pool.Pool] = {}
POOL_WAIT_S = 300


# mask_url lives in config (the lowest floor); the attribute names in records, the URL checks in
# urls: re-exported
__all__ = [
    "CONFIG_ATTR",
    "DATA_ATTR",
    "SQLITE_TIMEOUT_S",
    "StorageError",
    "check_storage",
    "mask_url",
    "same_database",
]


def scrub(text: str, url: str) -> str:
    """``text`` with ``url``'s password (if any) replaced by ``***``, wherever it appears."""
    masked = mask_url(url)
    if masked == url:
        return text
    head = masked.split("***@", 1)[0]
    password = url[len(head) : url.rfind("@", len(head))]
    return text.replace(url, masked).replace(password, "***") if password else text


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other databases or in-memory)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def make_storage(
    url: str,
    *,
    what: str = "--storage",
    create: bool = True,
    heartbeat: bool = True,
    heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
    grace_period_s: int = GRACE_PERIOD_S,
    max_retry: int = MAX_RETRY,
    stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> RDBStorage:
    """Open (and with ``create``, create) the RDB storage at ``url``.

    With ``heartbeat``, running trials record a heartbeat every ``heartbeat_interval_s``; one
    silent for ``grace_period_s`` is failed by the next worker that starts a trial and re-queued
    (at most ``max_retry`` times per original trial) by ``stale_callback`` (default: Optuna's
    ``RetryHeartbeatStaleTrialCallback``). ``url`` is checked first by
    :func:`search.store.urls.check_storage`; its errors name ``what`` (the flag or config key).
    """
    db = check_storage(url, what, create=create).path
    if db is not None and create:
        _make_folder(db, what)
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=heartbeat_interval_s, grace_period=grace_period_s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs["heartbeat_stale_trial_callback"] = stale_callback or RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry, inherit_intermediate_values=True
            )
    with _creation_lock(db):
        if db is not None:
            check_storage(url, what, create=create)  # again, under the lock: another process may have made it
            _sqlite_wal(db)
            engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if db is None:
                    engine_kwargs = _server_options(url, create, kwargs)
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            if db is None and url not in _READY:
                _check_schema(storage)
        except (
            sqlalchemy.exc.SQLAlchemyError,
            optuna.exceptions.StorageInternalError,
            ImportError,
            ValueError,
            RuntimeError,
        ) as exc:
            raise _open_error(exc, url, what) from exc
    if db is None:
        _READY.add(url)
        if url.startswith("postgresql"):
            _POOLS.setdefault(url, storage.engine.pool)
    if db is not None:
        _sqlite_fast_commits(storage.engine)
    return storage


def _server_options(url: str, create: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The engine options of a server database's storage (adding RDBStorage's to ``kwargs``).

    One connection per process: its heartbeat thread waits for the main thread's short
    transactions instead of opening a second server connection (a backend that fills its catalog
    caches again, about 2,300 rows read, and a slot of the server's or PgBouncer's).
    """
    kwargs.update(skip_compatibility_check=True)  # checked by _check_schema, on one connection
    if url in _READY or not create:  # a reader: the tables must exist (the schema is checked)
        kwargs.update(skip_table_creation=True)
    if not url.startswith("postgresql"):  # MySQL: Optuna's own engine (it sets its options)
        return {}
    # SQLAlchemy looks up the hstore type on each engine's first connection (Optuna's tables have
    # none): one query less per process (a new backend reads 30-500 more catalog rows for it)
    dialect = {"use_native_hstore": False} if _driver(url) in ("psycopg", "psycopg2") else {}
    if url in _POOLS:
        return {"pool": _POOLS[url], **dialect}
    connect_args: dict[str, Any] = {}
    if _driver(url) == "psycopg":
        # psycopg 3 prepares a statement on the server after its 5th use, under a name unique
        # per connection only; behind PgBouncer in transaction pooling mode the next transaction
        # may land on a server connection that already holds that name
        # (DuplicatePreparedStatement). Off: a few % more parsing on the server, PgBouncer works.
        connect_args["prepare_threshold"] = None
    # a heartbeat waits for the main thread's transaction (Optuna's heartbeat thread ends at the
    # first error, so not after SQLAlchemy's default 30 s: a slow read is not a dead worker)
    engine = sqlalchemy.create_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=POOL_WAIT_S,
        pool_pre_ping=True,
        connect_args=connect_args,
        **dialect,
    )
    if create and url not in _READY and not _has_schema(engine):
        # Optuna creates the tables on two connections at once (a session inside another): on
        # two throwaway ones, closed after
        pair = {"pool_size": 2, "max_overflow": 0, "connect_args": connect_args, **dialect}
        RDBStorage(url, engine_kwargs=pair, skip_compatibility_check=True).engine.dispose()
        kwargs.update(skip_table_creation=True)
    return {"pool": engine.pool, **dialect}


def _has_schema(engine: sqlalchemy.engine.Engine) -> bool:
    """Whether Optuna's tables are there, stamped with their schema revision."""
    try:
        with engine.connect() as conn:
            return (
                conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).first() is not None
            )
    except sqlalchemy.exc.ProgrammingError:  # no such table
        return False


def _check_schema(storage: RDBStorage) -> None:
    """Optuna's table schema check (its message), reading the schema's revision on one connection.

    Optuna's own (``check_table_schema_compatibility``) reads it while a session holds another, so
    every process opened two server connections, each a backend filling its catalog caches (about
    2,300 rows read, issue 31), and kept both for its life; here a worker holds one.
    """
    current, head = storage.get_current_version(), storage.get_head_version()
    if current == head:
        return
    fix = (
        "Please execute `$ optuna storage upgrade --storage $STORAGE_URL` for upgrading the storage."
        if current in storage.get_all_versions()
        else "Please try updating optuna to the latest version by `$ pip install -U optuna`."
    )
    raise RuntimeError(
        f"The runtime optuna version {optuna.__version__} is no longer compatible with the table "
        f"schema (revision {current}, this version's {head}). {fix}"
    )


def _open_error(exc: Exception, url: str, what: str) -> StorageError:
    """The error for a storage that did not open: a reader that found no study tables (Optuna
    wraps the driver's "relation does not exist"), or anything else (the server, the driver)."""
    if isinstance(exc.__cause__, sqlalchemy.exc.ProgrammingError):
        return StorageError(
            scrub(f"{what}: cannot read study tables at {mask_url(url)}: {_first_line(exc)}", url)
            + ". Fix: check the database name in the URL, or create the study first with "
            "`search create CONFIG --storage URL`"
        )
    return StorageError(
        scrub(f"{what}: cannot open storage {mask_url(url)}: {_wrapped(exc)}", url)
        + ". Fix: check the URL, that the database server is up and its driver installed"
    )


def _wrapped(exc: Exception) -> BaseException:
    """The error Optuna's StorageInternalError wraps (the driver's), else ``exc`` itself."""
    internal = isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None
    return exc.__cause__ if internal and exc.__cause__ is not None else exc


def _first_line(exc: BaseException) -> str:
    """The first line of the error under ``exc`` (Optuna wraps the driver's), without SQLAlchemy's
    class prefix."""
    line = str(exc.__cause__ or exc).strip().split("\n", 1)[0]
    return line.split(") ", 1)[1] if line.startswith("(") and ") " in line else line


def _driver(url: str) -> str:
    """The SQLAlchemy driver a URL names (``psycopg``, ``pysqlite``, ...; empty when unparseable)."""
    try:
        return str(sqlalchemy.engine.make_url(url).get_driver_name())
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return ""


def _make_folder(db: Path, what: str) -> None:
    """Create ``db``'s folder (checked by :func:`check_storage` first)."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"{what}: cannot create the storage folder {db.parent} ({exc.strerror or exc}). "
            f"Fix: {give(what)} a sqlite:/// path in a writable folder"
        ) from exc


@contextlib.contextmanager
def _creation_lock(db: Path | None) -> Iterator[None]:
    """Serialise opening an SQLite storage between processes on this machine.

    ``RDBStorage`` creates the tables and stamps the schema version on first use; two processes
    doing that at once on a new file fail with ``table ... already exists`` or ``UNIQUE constraint
    failed: alembic_version``. A lock on the file's folder (no lock file is left behind) makes the
    second wait until the first is done. Other databases: no lock (their DDL is transactional).
    """
    if db is None:
        yield
        return
    fd = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _sqlite_fast_commits(engine: sqlalchemy.engine.Engine) -> None:
    """``PRAGMA synchronous=NORMAL`` on every connection: with WAL, a commit no longer waits for an
    fsync (the WAL is synced at checkpoints), which cuts a trial's storage time several-fold. A
    killed process loses nothing; only a power cut or OS crash may lose the last commits, never
    the database."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened before the listener reconnect with it


def _sqlite_wal(db: Path) -> None:
    """WAL lets readers (the dashboard, `status`) work while a trial writes. Persistent per file."""
    try:
        with sqlite3.connect(db, timeout=SQLITE_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{db} is not a usable SQLite database ({exc})") from exc


def retrying(what: str, fn: Callable[[], Any], attempts: int = 5) -> Any:
    """``fn()``, retried with backoff on transient database errors (locks, dropped connections)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except sqlalchemy.exc.OperationalError as exc:
            if attempt == attempts:
                raise
            log.warning("%s: %s; retrying (%d/%d)", what, exc.orig, attempt, attempts)
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def load_study(name: str, storage: RDBStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise StorageError(f"no study named {name!r} in this storage (studies: {names})") from exc
