"""What a worker reads of its study while it runs: counts, the RUNNING trials' heartbeats, and the
COMPLETE trials its pruner compares against, each read so that its cost does not grow with the
number of workers.

Why not ``study.get_trials(states=...)``: Optuna wraps an RDB storage in a cache
(``_CachedStorage``) that, on every such call, re-reads each unfinished trial of the study in
full (params, user and system attrs, intermediate values) whatever ``states`` asks for. A loop that
took such a snapshot on every turn, every epoch (``should_prune``) and for every check re-read each
running trial about 14 times per trial, so a trial's storage work grew with the number of running
workers and the database's with its square. Here:

- :meth:`StudyReader.running` is one SQL statement (one snapshot): the study's trial counts by
  state and its RUNNING trials' number, start and last heartbeat (no params, no attrs);
- :meth:`StudyReader.complete_trials` keeps the COMPLETE trials this process has seen (a finished
  trial never changes) and reads only the ones that are new, each once;
- :class:`CompleteTrialsPruner` hands Optuna's median and percentile pruners those trials.

Optuna has no public API that counts trials by state or lists their ids without reading them in
full, nor one that reads a heartbeat, so these queries name the storage schema's tables and columns
(``trials``, ``trial_heartbeats``: unchanged since Optuna 2.x) instead of importing the private
``optuna.storages._rdb.models``. Trials themselves are read through the public
``RDBStorage.get_trial`` / ``get_all_trials`` (whose ``states`` filter runs in the database).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from search.study.study import RunningTrial

log = logging.getLogger(__name__)

# A trial state is stored by its name (SQLAlchemy's Enum): 'RUNNING', 'COMPLETE', ...
_TALLY = sqlalchemy.text(
    "SELECT t.state, COUNT(*), NULL, NULL, NULL, NULL FROM trials t"
    " WHERE t.study_id = :sid AND t.state <> 'RUNNING' GROUP BY t.state"
    " UNION ALL"
    " SELECT t.state, 1, t.trial_id, t.number, t.datetime_start, h.heartbeat FROM trials t"
    " LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
    " WHERE t.study_id = :sid AND t.state = 'RUNNING'"
).columns(
    sqlalchemy.column("state", sqlalchemy.String),
    sqlalchemy.column("n", sqlalchemy.Integer),
    sqlalchemy.column("trial_id", sqlalchemy.Integer),
    sqlalchemy.column("number", sqlalchemy.Integer),
    sqlalchemy.column("started", sqlalchemy.DateTime),
    sqlalchemy.column("heartbeat", sqlalchemy.DateTime),
)
_COMPLETE_IDS = sqlalchemy.text(
    "SELECT trial_id, number FROM trials WHERE study_id = :sid AND state = 'COMPLETE'"
).columns(sqlalchemy.column("trial_id", sqlalchemy.Integer), sqlalchemy.column("number", sqlalchemy.Integer))
_FINISHED_IDS = sqlalchemy.text(
    "SELECT trial_id, number FROM trials WHERE study_id = :sid AND state IN ('COMPLETE', 'PRUNED', 'FAIL')"
).columns(sqlalchemy.column("trial_id", sqlalchemy.Integer), sqlalchemy.column("number", sqlalchemy.Integer))
_BULK = 8  # more new COMPLETE trials than this: one bulk read (6 queries) instead of one read each


@dataclass(frozen=True)
class _Row:
    trial_id: int
    number: int
    started: datetime | None  # as stored (naive; UTC since Optuna 5.1): only compared with each other
    heartbeat: datetime | None  # the database's clock, naive


def _naive(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite returns CURRENT_TIMESTAMP as text
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=None)


class StudyReader:
    """The reads of one process on one storage (a study's id and COMPLETE trials are kept)."""

    def __init__(self, storage: RDBStorage) -> None:
        self.storage = storage
        self._ids: dict[str, int] = {}
        self._complete: dict[str, dict[int, FrozenTrial]] = {}  # by trial number

    def study_id(self, name: str) -> int:
        if name not in self._ids:
            self._ids[name] = self.storage.get_study_id_from_name(name)
        return self._ids[name]

    def _tally(self, name: str) -> tuple[Counter[TrialState], list[_Row], datetime]:
        sid = self.study_id(name)  # first: its ORM session must not run inside this connection
        with self.storage.engine.connect() as conn:
            rows = list(conn.execute(_TALLY, {"sid": sid}))
            db_now = _naive(conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one())
        counts: Counter[TrialState] = Counter()
        running: list[_Row] = []
        for state, n, trial_id, number, started, beat in rows:
            counts[TrialState[str(state)]] += int(n)
            if trial_id is not None:
                heartbeat = None if beat is None else _naive(beat)
                running.append(_Row(int(trial_id), int(number), started, heartbeat))
        return counts, running, db_now

    def counts(self, name: str) -> Counter[TrialState]:
        """The study's trials by state (one query; reads no trial)."""
        return self._tally(name)[0]

    def running(self, name: str, grace_period_s: float) -> tuple[Counter[TrialState], list[RunningTrial]]:
        """The study's counts by state and its RUNNING trials (host, pid and device unread: "?"),
        stale as :func:`search.study.study.running_trials` decides, from one snapshot."""
        counts, rows, db_now = self._tally(name)
        return counts, [self._running_trial(row, db_now, grace_period_s) for row in rows]

    def _running_trial(self, row: _Row, db_now: datetime, grace_s: float) -> RunningTrial:
        hb_age = None if row.heartbeat is None else max(0.0, (db_now - row.heartbeat).total_seconds())
        age: float | None = None
        if hb_age is not None:
            stale = hb_age > grace_s
        elif row.started is None:
            stale = False
        else:
            # no heartbeat (yet): stale once started longer ago than the grace period. The stored
            # start is naive (local time before Optuna 5.1, UTC since): only a trial that may be
            # that old either way is read in full for its start as Optuna gives it (local time).
            latest = max(datetime.now(UTC).replace(tzinfo=None), datetime.now())
            if (latest - row.started).total_seconds() <= grace_s:
                stale = False
            else:
                start = self.storage.get_trial(row.trial_id).datetime_start
                age = None if start is None else (datetime.now() - start).total_seconds()
                stale = age is not None and age > grace_s
        return RunningTrial(
            number=row.number,
            trial_id=row.trial_id,
            host="?",
            pid=None,
            device="?",
            started=row.started,
            age_s=age,
            heartbeat_age_s=hb_age,
            stale=stale,
        )

    def complete_trials(self, name: str) -> list[FrozenTrial]:
        """The study's COMPLETE trials by number; each is read from the storage once per process."""
        sid = self.study_id(name)
        known = self._complete.setdefault(name, {})
        with self.storage.engine.connect() as conn:
            rows = [(int(r[0]), int(r[1])) for r in conn.execute(_COMPLETE_IDS, {"sid": sid})]
        missing = [trial_id for trial_id, number in rows if number not in known]
        if len(missing) > _BULK:  # e.g. a new worker on a large study: one read, states filtered in SQL
            for t in self.storage.get_all_trials(sid, deepcopy=False, states=(TrialState.COMPLETE,)):
                known[t.number] = t
        else:
            for trial_id in missing:
                t = self.storage.get_trial(trial_id)
                known[t.number] = t
        return sorted(known.values(), key=lambda t: t.number)

    def finished_since(self, name: str, seen: Container[int]) -> list[FrozenTrial]:
        """The study's finished trials (COMPLETE, PRUNED, FAIL) whose number is not in ``seen``, by
        number: their ids in one query, then each new one read once."""
        sid = self.study_id(name)
        with self.storage.engine.connect() as conn:
            rows = list(conn.execute(_FINISHED_IDS, {"sid": sid}))
        new = [self.storage.get_trial(int(trial_id)) for trial_id, number in rows if number not in seen]
        return sorted(new, key=lambda t: t.number)


class _CompleteView:
    """The study as Optuna's median and percentile pruners read it: its COMPLETE trials come from
    :meth:`StudyReader.complete_trials`; everything else is the study's own."""

    def __init__(self, study: optuna.Study, reader: StudyReader) -> None:
        self._study = study
        self._reader = reader

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if not deepcopy and states is not None and tuple(states) == (TrialState.COMPLETE,):  # type: ignore[arg-type]
            return self._reader.complete_trials(self._study.study_name)
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class CompleteTrialsPruner(optuna.pruners.BasePruner):
    """A median or percentile pruner that reads the study's COMPLETE trials through a
    :class:`StudyReader` (new ones only) instead of a snapshot that re-reads every running trial."""

    def __init__(self, pruner: optuna.pruners.BasePruner, reader: StudyReader) -> None:
        self.pruner = pruner
        self.reader = reader

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.pruner.prune(_CompleteView(study, self.reader), trial)  # type: ignore[arg-type]


def complete_trials(study: optuna.Study, reader: StudyReader | None) -> list[FrozenTrial]:
    """The study's COMPLETE trials: through ``reader`` when the run loop gave one (each trial read
    once per process), else Optuna's own read."""
    if reader is not None:
        return reader.complete_trials(study.study_name)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
