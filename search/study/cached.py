"""The storage a running study reads through: finished trials read once per process, and only the
trials a caller asks for read at all.

Optuna wraps an RDB storage in a cache (``_CachedStorage``) that keeps finished trials but, on
every ``get_all_trials`` whatever its ``states``, re-reads each unfinished trial of the study in
full (params, user and system attrs, intermediate values). In a study with N workers that is the
other N - 1 RUNNING trials, at every ``ask()`` (the WAITING queue), every TPE suggestion (the
sampler's snapshot) and every pruner call; on PostgreSQL those reads of several trials at once
(``trial_id IN (...)``) scan the small attribute tables whole, so the storage work of a trial grew
with the number of workers. :class:`StudyStorage` answers the calls that ask only for finished
trials (COMPLETE, PRUNED, FAIL: the samplers' and pruners' reads) and the WAITING queue from:

- one query listing the study's trials in the states asked for (id and state, no attrs), then a
  read of the finished ones this process has not seen, once (a finished trial never changes;
  Optuna refuses writes to it), with plain SQL (:mod:`search.store.trial_rows`: an eighth of the
  ORM's CPU): each by its id when they are few, in one read when many workers finished trials
  since, all at once when most are unseen (a worker joining a study);
- when RUNNING trials are asked for too (TPE's constant liar, on by default in Optuna 5, lies
  about the other workers' running trials): the same list with their ids, and those read afresh
  at each call (a running trial changes), with plain SQL too;
- one query listing the WAITING trials (usually none), each then read (it may be taken meanwhile).

Every other call (every state, or WAITING with others) is Optuna's own. Samplers ask through
``Study._get_trials(use_cache=True)``, which reads every state once per ``ask()`` and filters
afterwards; :class:`FinishedView` hands them a study whose ``_get_trials`` passes their states to
the storage instead (memoised for the trial), so random, NSGA-II and QMC read no RUNNING trial and
TPE only the running trials its constant liar asks for.

Private Optuna names, and why: there is no public way to change what the RDB storage's cache
reads; ``optuna.storages._CachedStorage`` (exported in ``optuna.storages.__all__``) is extended
here rather than copied, so heartbeats (its ``BaseHeartbeat`` half) and the param-distribution
cache stay Optuna's. ``Study._get_trials`` and ``Study._storage`` / ``_study_id`` are what Optuna's
own samplers call. The trial lists name the storage schema's ``trials`` table and its columns
(unchanged since Optuna 2.x), as :mod:`search.study.tally` does.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Container, Iterable
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, _CachedStorage
from optuna.trial import FrozenTrial, TrialState

from search.store.trial_rows import read_finished, read_trials

FINISHED = frozenset((TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
LISTED = FINISHED | {TrialState.RUNNING}  # what get_all_trials answers itself (and WAITING alone)


@functools.cache
def _listing(states: tuple[str, ...]) -> sqlalchemy.TextClause | sqlalchemy.TextualSelect:
    """The ids and states of the study's trials in ``states`` (TrialState names: no user text)."""
    names = ", ".join(f"'{name}'" for name in states)
    return sqlalchemy.text(
        f"SELECT trial_id, state FROM trials WHERE study_id = :sid AND state IN ({names})"
    ).columns(
        sqlalchemy.column("trial_id", sqlalchemy.Integer), sqlalchemy.column("state", sqlalchemy.String)
    )


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

    def _listed_trials(self, study_id: int, wanted: frozenset[TrialState]) -> list[FrozenTrial]:
        """The study's trials in ``wanted`` (finished states, and RUNNING): finished ones this
        process has not seen yet and every RUNNING one (it changes) are read, the rest known."""
        query = _listing(tuple(sorted(state.name for state in wanted)))
        with self.rdb.engine.connect() as conn:
            rows = [(int(tid), str(state)) for tid, state in conn.execute(query, {"sid": study_id})]
        running = [tid for tid, state in rows if state == TrialState.RUNNING.name]
        with self._guard:
            unseen = [
                tid for tid, state in rows if state != TrialState.RUNNING.name and tid not in self._finished
            ]
            read: list[FrozenTrial] = []
            if len(unseen) > max(BULK, len(rows) // 2):  # a new worker on a large study: in SQL
                read, unseen = read_finished(self.rdb.engine, study_id), []
            read += read_trials(self.rdb.engine, unseen + running)  # since this process last looked
            self._finished.update((t._trial_id, t) for t in read if t.state.is_finished())
            now = {t._trial_id: t for t in read if not t.state.is_finished()}
            trials = [now.get(tid) or self._finished.get(tid) for tid, _ in rows]
        return sorted((t for t in trials if t is not None and t.state in wanted), key=lambda t: t.number)

    def _waiting_trials(self, study_id: int) -> list[FrozenTrial]:
        with self.rdb.engine.connect() as conn:
            ids = [int(tid) for (tid,) in conn.execute(_WAITING_IDS, {"sid": study_id})]
        trials = [self.rdb.get_trial(tid) for tid in ids]
        return [t for t in trials if t.state == TrialState.WAITING]


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
