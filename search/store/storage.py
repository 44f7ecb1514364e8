"""Study storage: open Optuna's RDB storage (SQLite or PostgreSQL) and find studies in it.

SQLite (the default, one machine) gets WAL mode, a 60 s busy timeout and ``synchronous=NORMAL``
so several processes and the dashboard can share it; concurrent first starts on one new file are
serialised by a lock on its folder. A PostgreSQL URL lets workers on many machines join one study.
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
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from search.config import SearchConfig, default_of, mask_url
from search.errors import InputError
from search.store.records import CONFIG_ATTR, DATA_ATTR

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S: int = default_of(SearchConfig, "heartbeat_interval_s")
GRACE_PERIOD_S: int = default_of(SearchConfig, "grace_period_s")
MAX_RETRY: int = default_of(SearchConfig, "max_retry")
SQLITE_TIMEOUT_S = 60


class StorageError(InputError):
    """A storage URL that cannot be opened, or a study that is not there."""


# mask_url lives in config (the lowest floor); the attribute names in records: re-exported
__all__ = ["CONFIG_ATTR", "DATA_ATTR", "StorageError", "mask_url"]


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
    ``RetryHeartbeatStaleTrialCallback``).
    """
    db = sqlite_path(url)
    if db is not None:
        _sqlite_folder(db, create=create)
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=heartbeat_interval_s, grace_period=grace_period_s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs["heartbeat_stale_trial_callback"] = stale_callback or RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry, inherit_intermediate_values=True
            )
    with _creation_lock(db):
        engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if db is not None:
            _check_sqlite_file(db, writable=create)
            _sqlite_wal(db)
            engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
            raise StorageError(scrub(f"cannot open storage {mask_url(url)}: {exc}", url)) from exc
    if db is not None:
        _sqlite_fast_commits(storage.engine)
    return storage


def _sqlite_folder(db: Path, *, create: bool) -> None:
    """StorageError unless ``db`` exists or (with ``create``) its folder exists or can be made."""
    if db.exists():
        return
    if not create:
        raise StorageError(
            f"no study storage at {db}. Fix: run `search run CONFIG` first, "
            "or pass --storage with the right URL"
        )
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"cannot create the storage folder {db.parent} ({exc.strerror or exc}). "
            "Fix: pass --storage with a sqlite:/// path in a writable folder"
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


OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


def _check_sqlite_file(db: Path, *, writable: bool) -> None:
    """StorageError unless ``db`` is absent, empty, or an SQLite file holding Optuna's tables;
    with ``writable``, also unless its folder (and the file) can be written."""
    fix = "Fix: pass --storage sqlite:///path/to/another.db (a new file is created)"
    if db.exists() and not db.is_file():
        raise StorageError(f"storage {db} is not a file. {fix}")
    if writable:
        for path in (db.parent, db) if db.exists() else (db.parent,):
            if not os.access(path, os.W_OK):
                raise StorageError(
                    f"storage {path} is read-only: a study cannot record its trials there. "
                    f"Fix: make it writable, or {fix[5:]}"
                )
    if not db.exists() or db.stat().st_size == 0:
        return
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=SQLITE_TIMEOUT_S) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"storage {db} is not an SQLite database ({exc}). {fix}") from exc
    if tables and not OPTUNA_TABLES.issubset(tables):
        raise StorageError(
            f"storage {db} is an SQLite database but not an Optuna one (tables: "
            f"{', '.join(sorted(tables)[:5])}). {fix}"
        )


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
