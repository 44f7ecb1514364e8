"""Storage URLs: the one parser and checker of ``--storage``, ``--warm-start-storage`` and the
config's ``storage``, and the identity of the database a URL names.

:func:`check_storage` is what every command runs on a storage URL before it opens it: an empty
value, a plain file path, a URL SQLAlchemy cannot parse, a database it has no dialect for, an
over-long file name, and (SQLite) a missing file for a command that only reads, a folder, a file
that is not an SQLite database or not an Optuna one, a read-only folder for a command that writes:
each is a :class:`StorageError` (exit 2) naming the flag or key (``what``) and the fix.
:func:`same_database` says whether two URLs name one database (a SQLite file by its real path:
``./``, ``..``, symlinks, relative or absolute; a server database by host, port and name).

Imports neither optuna nor torch (``search validate`` checks a config's storage with it).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import mask_url, path_too_long
from search.errors import InputError

SQLITE_TIMEOUT_S = 60
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
SQLITE_FILE = "sqlite:///"
URL_FORMS = "sqlite:///path/to/studies.db or postgresql+psycopg://user:pw@host/db"
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
# Where a command finds its storage URL when --storage is absent (kept out of scripts and `ps`):
STORAGE_ENV = "SEARCH_STORAGE"  # the user's, read by every command that takes --storage
WORKER_STORAGE_ENV = "SEARCH_WORKER_STORAGE"  # `search run --workers` hands its workers the URL
DASHBOARD_STORAGE_ENV = "SEARCH_DASHBOARD_STORAGE"  # `search run --dashboard` hands its dashboard the URL


class StorageError(InputError):
    """A storage URL that cannot be opened, or a study that is not there."""


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL: its backend (``sqlite``, ``postgresql``, ...), its SQLite file (None for
    a server or in-memory database) and the identity of the database it names."""

    url: str
    backend: str
    path: Path | None
    identity: tuple[Any, ...]


def give(what: str) -> str:
    """How a fix names the value: ``pass --storage`` for a flag, ``set SEARCH_WORKER_STORAGE to`` for an
    environment variable, ``set storage:`` for a config key."""
    if what.startswith("-"):
        return f"pass {what}"
    return f"set {what} to" if what.isupper() else f"set {what}:"


def _fail(what: str, url: str, problem: str, fix: str) -> StorageError:
    shown = mask_url(url)
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    return StorageError(f"{what}: {problem} (got {shown!r}). Fix: {fix}")


def parse_storage_url(url: str, what: str = "--storage") -> StorageURL:
    """``url`` parsed (StorageError naming ``what`` when it is empty, a plain path, unparseable or a
    database without a dialect); touches no file."""
    if not isinstance(url, str) or not url.strip():
        raise _fail(what, str(url or ""), "missing", f"{give(what)} sqlite:///storage/studies.db")
    if "://" not in url:
        raise _fail(
            what,
            url,
            "not a database URL but a plain file path",
            f"{give(what)} sqlite:///{mask_url(url)} (SQLite: sqlite:/// then the path)",
        )
    if url.startswith(SQLITE_FILE) and "?" not in url:  # the common case, as SQLAlchemy reads it
        database = url[len(SQLITE_FILE) :]  # (without importing it: `search validate` stays fast)
    else:
        server = _parse_with_sqlalchemy(url, what)
        if isinstance(server, StorageURL):
            return server
        database = server
    if database in ("", ":memory:") or database.startswith("file:"):
        return StorageURL(url, "sqlite", None, ("sqlite", url))
    path = Path(database)
    _check_length(what, url, path)
    return StorageURL(url, "sqlite", path, ("sqlite", os.path.realpath(path)))


def _parse_with_sqlalchemy(url: str, what: str) -> StorageURL | str:
    """A server database's StorageURL, or an SQLite URL's database part (SQLAlchemy's parser)."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
        backend = parsed.get_backend_name()
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        scheme = url.split("://", 1)[0]
        raise _fail(what, url, f"no database of kind {scheme!r}", f"use {URL_FORMS}") from None
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError) as exc:
        raise _fail(what, url, f"not a database URL ({exc})", f"use {URL_FORMS}") from None
    if backend == "sqlite":
        return parsed.database or ""
    port = parsed.port or DEFAULT_PORTS.get(backend)
    host = (parsed.host or "localhost").lower()
    return StorageURL(url, backend, None, (backend, host, port, parsed.database))


def _check_length(what: str, url: str, path: Path) -> None:
    """StorageError when the file name cannot exist on this system: the OS would say ``File name too
    long`` at the first use."""
    problem = path_too_long(os.path.abspath(path))
    if problem:
        raise _fail(what, url, problem, "use a shorter path")


def same_database(a: str, b: str) -> bool:
    """Whether URLs ``a`` and ``b`` name the same database (unparseable URLs: equal strings)."""
    if a == b:
        return True
    try:
        one, two = parse_storage_url(a), parse_storage_url(b)
    except StorageError:
        return False
    if one.identity == two.identity:
        return True
    if one.path is not None and two.path is not None:
        try:
            return one.path.exists() and two.path.exists() and os.path.samefile(one.path, two.path)
        except OSError:
            return False
    return False


def check_storage(url: str, what: str = "--storage", *, create: bool) -> StorageURL:
    """``url`` parsed and, for an SQLite file, checked as a command that reads (``create`` False:
    the file must hold Optuna's tables; none is created) or writes (``create``: absent, empty or an
    Optuna database, in a folder that exists or can be made and can be written). StorageError
    naming ``what`` and the fix otherwise; reads only, creates nothing."""
    parsed = parse_storage_url(url, what)
    db = parsed.path
    if db is None:
        return parsed
    try:
        _check_sqlite(parsed, what, create=create)
    except OSError as exc:  # a path the system refuses (a loop of links, no permission)
        raise _fail(what, url, f"cannot use {db} ({exc.strerror or exc})", "use another path") from exc
    return parsed


def _check_sqlite(parsed: StorageURL, what: str, *, create: bool) -> None:
    db, url = parsed.path, parsed.url
    assert db is not None
    new_file = f"{give(what)} sqlite:///path/to/another.db (a new file is created)"
    if not create and not db.exists():
        raise _fail(
            what,
            url,
            f"no study storage at {db}: no such file, and this command creates none",
            f"{give(what)} with the URL `search run` used, or run `search run CONFIG` first",
        )
    if db.exists() and not db.is_file():
        raise _fail(
            what,
            url,
            f"storage {db} is not a file",
            f"{give(what)} sqlite:///{db}/studies.db (the file, not its folder)",
        )
    if create and not db.exists():
        _check_folder(what, url, db)
    elif create and not (os.access(db, os.W_OK) and os.access(db.parent, os.W_OK)):
        path = db.parent if os.access(db, os.W_OK) else db
        raise _fail(
            what,
            url,
            f"storage {path} is read-only: a study cannot record its trials there",
            f"make it writable, or {new_file}",
        )
    if not db.exists() or (create and db.stat().st_size == 0):
        return
    _check_tables(parsed, what, create=create)


def _check_folder(what: str, url: str, db: Path) -> None:
    """StorageError unless ``db``'s folder exists and is writable, or can be made."""
    folder = db.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise _fail(
            what, url, f"cannot create the storage folder {folder} (a file has that name)", "use another path"
        )
    if not os.access(folder, os.W_OK):
        raise _fail(
            what,
            url,
            f"storage {folder} is read-only: the storage file cannot be created there",
            f"make it writable, or {give(what)} sqlite:///path/in/a/writable/folder.db",
        )


def _check_tables(parsed: StorageURL, what: str, *, create: bool) -> None:
    """StorageError unless the SQLite file opens and holds Optuna's tables (or, with ``create``,
    no table at all)."""
    db, url = parsed.path, parsed.url
    fix = (
        f"{give(what)} sqlite:///path/to/another.db (a new file is created)"
        if create
        else f"{give(what)} with the URL `search run` used"
    )
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=SQLITE_TIMEOUT_S) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise _fail(what, url, f"storage {db} is not an SQLite database ({exc})", fix) from exc
    if OPTUNA_TABLES.issubset(tables) or (create and not tables):
        return
    if not tables:
        raise _fail(what, url, f"storage {db} is an empty SQLite database: it holds no study", fix)
    listed = ", ".join(sorted(tables)[:5])
    raise _fail(
        what, url, f"storage {db} is an SQLite database but not an Optuna one (tables: {listed})", fix
    )


__all__ = [
    "DASHBOARD_STORAGE_ENV",
    "OPTUNA_TABLES",
    "STORAGE_ENV",
    "WORKER_STORAGE_ENV",
    "StorageError",
    "StorageURL",
    "check_storage",
    "give",
    "parse_storage_url",
    "same_database",
]
