"""Finished trials shared by the processes of one machine: a private folder of pickled trials.

Every worker of a study needs every finished trial (its sampler and pruner read them), and a
finished trial never changes (Optuna refuses writes to it). Each worker process read each one from
the database once, and ``search run --workers N`` (which prints them) once more, so the database's
work per trial grew with the workers. Here the first process on a machine that reads a finished
trial (usually the worker that ran it) leaves it in a folder the others read first: on one
machine a finished trial is read from the database about once, however many workers run there.

The folder: ``$SEARCH_TRIAL_CACHE`` (``off``: no sharing), by default ``convnet-search-<uid>/trials``
under the system's temporary folder (node-local, emptied by the system). It must be this user's
and writable by no one else (a trial is a pickle: loading one runs code), else it is not used,
with a warning (the default's parent folder too: its name is predictable), and a file in it that
is not this user's, or others can write, is never loaded. Under it, one folder per study and
database (a random token kept on the study, so a study recreated under the same name or id never
reads another's trials, with the database's identity, so a copy of the database that carries the
token does not either) and Optuna version; a trial is written to a temporary name and renamed, so
a reader never sees half of one. A file that cannot be
read (cut short, another Optuna) is ignored and the trial read from the database.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import stat
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

CACHE_ENV = "SEARCH_TRIAL_CACHE"
_UNREADABLE = (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError)


def cache_root() -> Path | None:
    """The machine's folder of shared trials (created), or None: turned off or not private."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        folders = [Path(value)]
    else:  # both levels private: the first one's name is predictable, anyone could make it first
        base = Path(tempfile.gettempdir()) / f"convnet-search-{os.getuid()}"
        folders = [base, base / "trials"]
    for folder in folders:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = folder.lstat()
        except OSError as exc:
            log.warning("finished trials are not shared: cannot use %s (%s)", folder, exc)
            return None
        if not _private(info) or not stat.S_ISDIR(info.st_mode):
            log.warning(
                "finished trials are not shared between processes: %s is not a folder only this "
                "user can write (owner uid %d, mode %o). Fix: set %s to a private folder, or to 'off'",
                folder,
                info.st_uid,
                info.st_mode & 0o777,
                CACHE_ENV,
            )
            return None
    return folders[-1]


def _private(info: os.stat_result) -> bool:
    """Owned by this user and writable by no one else."""
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


class TrialCache:
    """One study's shared finished trials, by trial id."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def open(cls, token: str, database: str = "") -> TrialCache | None:
        """The cache of the study whose token is ``token`` in ``database`` (its identity: a copy of
        the database carries the token, and its trial ids mean other trials once the copies
        diverge). None: sharing is off or unusable."""
        root = cache_root()
        if root is None:
            return None
        where = hashlib.sha256(f"{database}|{token}".encode()).hexdigest()[:32]
        folder = root / f"{where}-optuna{optuna.__version__}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            log.warning(
                "finished trials are not shared between processes: cannot create %s (%s)", folder, exc
            )
            return None
        return cls(folder)

    def _path(self, trial_id: int) -> Path:
        return self.folder / f"{trial_id}.pkl"

    def get(self, ids: Iterable[int]) -> dict[int, FrozenTrial]:
        """The finished trials among ``ids`` that some process of this machine left here."""
        found: dict[int, FrozenTrial] = {}
        for trial_id in ids:
            try:
                with self._path(trial_id).open("rb") as file:
                    if not _private(os.fstat(file.fileno())):  # not this user's: never unpickled
                        log.warning("shared trial %s is not this user's: ignored", file.name)
                        continue
                    trial = pickle.load(file)
            except FileNotFoundError:
                continue
            except _UNREADABLE as exc:
                log.debug("shared trial %d unreadable (%s): read from the database", trial_id, exc)
                continue
            if isinstance(trial, FrozenTrial) and trial._trial_id == trial_id and trial.state.is_finished():
                found[trial_id] = trial
        return found

    def put(self, trials: Iterable[FrozenTrial]) -> None:
        """Leave the finished ones among ``trials`` for this machine's other processes."""
        for trial in trials:
            path = self._path(trial._trial_id)
            if not trial.state.is_finished() or path.exists():
                continue
            part = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
            try:
                with part.open("wb") as file:
                    pickle.dump(trial, file, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(part, path)
            except (OSError, pickle.PicklingError) as exc:  # a full disk: read from the database
                log.debug("cannot share trial %d (%s)", trial._trial_id, exc)
                part.unlink(missing_ok=True)
