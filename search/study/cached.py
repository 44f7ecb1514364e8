"""The storage a running study reads through: finished trials read once per machine, and only the
trials a caller asks for read at all.

Optuna wraps an RDB storage in a cache (``_CachedStorage``) that keeps finished trials but, on
every ``get_all_trials`` whatever its ``states``, re-reads each unfinished trial of the study in
full (params, user and system attrs, intermediate values). In a study with N workers that is the
other N - 1 RUNNING trials, at every ``ask()`` (the WAITING queue), every TPE suggestion (the
sampler's snapshot) and every pruner call; on PostgreSQL those reads of several trials at once
(``trial_id IN (...)``) scan the small attribute tables whole, so the storage work of a trial grew
with the number of workers. :class:`StudyStorage` answers the calls that ask only for finished
trials (COMPLETE, PRUNED, FAIL: the samplers' and pruners' reads) and the WAITING queue from:

- one query listing the study's trials from the first one this process does not know finished
  (id and state, no attrs: the running and recent trials, not the whole study; every trial below
  it is finished and known, a finished trial never changes and new trials get higher ids), then a
  read of the finished ones this process has not seen, once (Optuna refuses writes to a finished
  trial): first from this machine's shared folder (:mod:`search.store.trial_cache`, where the
  worker that ran a trial, or the first to read it, left it), the rest with plain SQL
  (:mod:`search.store.trial_rows`: an eighth of the ORM's CPU), each by its id when they are few,
  in one read when many workers finished trials since, all at once when most are unseen (a
  worker joining a study);
- when RUNNING trials are asked for too (TPE's constant liar, on by default in Optuna 5, lies
  about the other workers' running trials): the same list with their ids, and those read afresh
  at each call (a running trial changes), with plain SQL too; for a sampler
  (:class:`FinishedView`) only their params and system attrs, not the user attrs and steps that
  grow as they train;
- one query listing the WAITING trials (usually none), each then read (it may be taken meanwhile).

Every other call (every state, or WAITING with others) is Optuna's own. Samplers ask through
``Study._get_trials(use_cache=True)``, which reads every state once per ``ask()`` and filters
afterwards; :class:`FinishedView` hands them a study whose ``_get_trials`` passes their states to
the storage instead (memoised for the trial), so random, NSGA-II and QMC read no RUNNING trial and
TPE only the running trials its constant liar asks for.

Private Optuna names, and why: there is no public way to change what the RDB storage's cache
reads; ``optuna.storages._CachedStorage`` (exported in ``optuna.storages.__all__``) is extended
here rather than copied, so heartbeats (its ``BaseHeartbeat`` half) and the param-distribution
cache stay Optuna's; its ``_trial_id_to_study_id_and_number`` tells which study a trial this
process ran belongs to (shared as soon as it finished), its ``_add_trials_to_cache`` makes a
WAITING trial taken from the queue known to it, as its own read of the queue would. ``Study._get_trials`` and
``Study._storage`` / ``_study_id`` are what Optuna's own samplers call. The trial lists name the
storage schema's ``trials`` table and its columns (unchanged since Optuna 2.x), as
:mod:`search.study.tally` does.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Container, Iterable
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, _CachedStorage
from optuna.trial import FrozenTrial, TrialState

from search.store.records import TRIAL_CACHE_SYSTEM_ATTR
from search.store.trial_cache import TrialCache
from search.store.trial_rows import read_finished, read_trials
from search.store.urls import StorageError, parse_storage_url

FINISHED = frozenset((TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
LISTED = FINISHED | {TrialState.RUNNING}  # what get_all_trials answers itself (and WAITING alone)


# The study's trials (id and state, no attrs): all of them (through its index), then from ``:low``
# on. Every trial below a worker's ``low`` is finished and known to it (a finished trial never
# changes; new trials get higher ids), so a listing reads the running, waiting and recent trials,
# not the whole study: through the primary key's range (``study_id + 0`` keeps PostgreSQL, before
# it has statistics, and SQLite from reading the study's whole index instead).
_IDS: list[sqlalchemy.ColumnClause[Any]] = [
    sqlalchemy.column("trial_id", sqlalchemy.Integer),
    sqlalchemy.column("state", sqlalchemy.String),
]
_STUDY = sqlalchemy.text(
    "SELECT trial_id, state FROM trials WHERE study_id = :sid ORDER BY trial_id"
).columns(*_IDS)
_RECENT = sqlalchemy.text(
    "SELECT trial_id, state FROM trials WHERE study_id + 0 = :sid"
    " AND trial_id BETWEEN :low AND 2147483647 ORDER BY trial_id"
).columns(*_IDS)
_FINISHED_NAMES = frozenset(state.name for state in FINISHED)
_WAITING_IDS = sqlalchemy.text(
    "SELECT trial_id FROM trials WHERE study_id = :sid AND state = 'WAITING' ORDER BY trial_id"
).columns(sqlalchemy.column("trial_id", sqlalchemy.Integer))
# Unseen finished trials: more than BULK and than half the study's (a worker joining a large
# study), one read of every finished trial, states filtered in SQL; otherwise a read of those.
BULK = 8


def _wanted(states: Container[TrialState] | None) -> frozenset[TrialState] | None:
    """``states`` as a set (None: every state, or a container that cannot be listed)."""
    if states is None or not isinstance(states, Iterable):
        return None
    return frozenset(states)


class StudyStorage(_CachedStorage):
    """Optuna's cached RDB storage, except that calls asking only for finished (and RUNNING) or
    WAITING trials read what they ask for (see the module's docstring). ``rdb``: the storage underneath."""

    def __init__(self, rdb: RDBStorage) -> None:
        super().__init__(rdb)
        self.rdb = rdb
        self._finished: dict[int, FrozenTrial] = {}  # by trial id: read once, never changes
        self._below: dict[int, list[int]] = {}  # by study id: its first trial ids, all in _finished
        self._shared: dict[int, TrialCache | None] = {}  # by study id: this machine's finished trials
        self._guard = threading.Lock()

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_guard"]
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._guard = threading.Lock()

    def get_trial(self, trial_id: int) -> FrozenTrial:
        known = self._finished.get(trial_id)
        if known is not None:
            return known
        trial = super().get_trial(trial_id)
        if trial.state.is_finished():
            self._finished[trial_id] = trial
            # one of this process's trials (Optuna's cache knows its study): shared at once
            study = self._trial_id_to_study_id_and_number.get(trial_id)
            cache = self._shared.get(study[0]) if study is not None else None
            if cache is not None:
                cache.put([trial])
        return trial

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        wanted = _wanted(states)
        if wanted is not None and wanted <= LISTED:
            trials = self._listed_trials(study_id, wanted)
        elif wanted == frozenset((TrialState.WAITING,)):
            trials = self._waiting_trials(study_id)
        else:
            return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return copy.deepcopy(trials) if deepcopy else trials

    def sampled_trials(self, study_id: int, wanted: frozenset[TrialState]) -> list[FrozenTrial]:
        """``get_all_trials`` as a sampler sees the study (``wanted`` within :data:`LISTED`): its
        RUNNING trials with their params and system attrs only (what TPE's constant liar and the GP
        sampler read of them), not the user attrs and steps that grow as they train: with N
        workers each trial reads N - 1 running trials (issue 31)."""
        return self._listed_trials(study_id, wanted, sampled=True)

    def _listed_trials(
        self, study_id: int, wanted: frozenset[TrialState], sampled: bool = False
    ) -> list[FrozenTrial]:
        """The study's trials in ``wanted`` (finished states, and RUNNING): finished ones this
        process has not seen yet and every RUNNING one (it changes) are read, the rest known;
        ``sampled``: the RUNNING ones as a sampler sees them (:meth:`sampled_trials`)."""
        with self._guard:
            below = self._below.setdefault(study_id, [])
            low = below[-1] + 1 if below else 0
            with self.rdb.engine.connect() as conn:
                listed = conn.execute(_RECENT if low else _STUDY, {"sid": study_id, "low": low})
                rows = [(int(tid), str(state)) for tid, state in listed]
            names = {state.name for state in wanted}
            unseen: list[int] = []
            if names & _FINISHED_NAMES:  # every finished trial not seen yet (each is read once
                # whichever call reads it, and ``low`` moves past it), first from this machine's
                new = [t for t, state in rows if state in _FINISHED_NAMES and t not in self._finished]
                unseen = self._from_machine(study_id, new)
            running = [t for t, state in rows if state == "RUNNING" and "RUNNING" in names]
            read: list[FrozenTrial] = []
            if len(unseen) > max(BULK, len(rows) // 2):  # a new worker on a large study: in SQL
                read, unseen = read_finished(self.rdb.engine, study_id), []
            if unseen or running:  # since this process last looked
                read += read_trials(self.rdb.engine, unseen + running, sampled=running if sampled else ())
            late = {t._trial_id for t in read if sampled and t._trial_id in running and t.state.is_finished()}
            if late:  # a running trial that finished before it was read: whole, as every finished one
                read = [t for t in read if t._trial_id not in late] + read_trials(self.rdb.engine, late)
            self._finished.update((t._trial_id, t) for t in read if t.state.is_finished())
            if (cache := self._shared.get(study_id)) is not None:  # read here, or this process's
                cache.put(self._finished[tid] for tid, _ in rows if tid in self._finished)
            now = {t._trial_id: t for t in read if not t.state.is_finished()}
            for tid, state in rows:  # move ``low`` past the leading finished trials it knows
                if state not in _FINISHED_NAMES or tid not in self._finished:
                    break
                below.append(tid)
            trials: list[FrozenTrial | None] = [self._finished[tid] for tid in below if tid < low]
            trials += [now.get(tid) or self._finished.get(tid) for tid, _ in rows]
        return sorted((t for t in trials if t is not None and t.state in wanted), key=lambda t: t.number)

    def _from_machine(self, study_id: int, unseen: list[int]) -> list[int]:
        """Take the ``unseen`` finished trials another process of this machine left in the shared
        folder (:mod:`search.store.trial_cache`); the ones still to read from the database."""
        if study_id not in self._shared:  # opened at the first read of finished trials
            token = self._token(study_id)
            self._shared[study_id] = None if token is None else TrialCache.open(token, self._database())
        cache = self._shared[study_id]
        found = cache.get(unseen) if cache is not None and unseen else {}
        self._finished.update(found)
        return [tid for tid in unseen if tid not in found]

    def _database(self) -> str:
        """The identity of the database (an SQLite file's real path; a server's host, port, name)."""
        try:
            return str(parse_storage_url(self.rdb.url).identity)
        except StorageError:
            return self.rdb.url

    def _token(self, study_id: int) -> str | None:
        """The study's shared-folder token (set now when it has none: two processes that set it at
        once each keep theirs, sharing less until they restart, never another study's trials)."""
        token = self.rdb.get_study_system_attrs(study_id).get(TRIAL_CACHE_SYSTEM_ATTR)
        if not isinstance(token, str):
            token = uuid.uuid4().hex
            try:
                self.rdb.set_study_system_attr(study_id, TRIAL_CACHE_SYSTEM_ATTR, token)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):
                return None  # a role that cannot write (a read-only follower): nothing shared
        return token

    def _waiting_trials(self, study_id: int) -> list[FrozenTrial]:
        """The study's WAITING trials (the queue ``ask()`` takes from), each read now and known to
        Optuna's cache (its ``set_trial_param`` looks up the study of the trial it writes to: a
        trial enqueued by another process after this one opened the study is otherwise unknown)."""
        with self.rdb.engine.connect() as conn:
            ids = [int(tid) for (tid,) in conn.execute(_WAITING_IDS, {"sid": study_id})]
        trials = [t for t in (self.rdb.get_trial(tid) for tid in ids) if t.state == TrialState.WAITING]
        if trials:
            self.get_study_directions(study_id)  # Optuna's cache now holds the study
            with self._lock:
                self._add_trials_to_cache(study_id, trials)
        return trials


class FinishedView:
    """A study as a sampler sees it during one trial: ``_get_trials`` passes the sampler's states
    to the storage (memoised until the trial ends) instead of reading every state and filtering.
    Everything else is the study's own."""

    def __init__(self, study: optuna.Study, number: int) -> None:
        self.study = study
        self.number = number
        # A snapshot of every state (``states`` None) served by the finished trials: exact for a
        # sampler that uses unfinished trials only as the cache barrier of Optuna's
        # IntersectionSearchSpace (multivariate TPE), when it is a fresh sampler each trial
        # (:class:`search.study.sampling.TrialSeeded`): set by it for TPE and random.
        self.finished_snapshot = False
        self._memo: dict[frozenset[TrialState], list[FrozenTrial]] = {}

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        wanted = _wanted(states)
        if wanted is None and self.finished_snapshot:
            wanted = FINISHED
        storage = self.study._storage
        if (
            wanted is not None
            and wanted <= LISTED
            and not wanted <= FINISHED
            and isinstance(storage, StudyStorage)
        ):
            trials = storage.sampled_trials(self.study._study_id, wanted)  # TPE's constant liar
            return copy.deepcopy(trials) if deepcopy else trials
        if wanted is None or not wanted <= FINISHED:
            return self.study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if wanted not in self._memo:
            self._memo[wanted] = self.study.get_trials(deepcopy=False, states=tuple(wanted))
        trials = self._memo[wanted]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.study, name)
