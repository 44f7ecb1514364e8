"""What a worker counts of its study while it runs: trials by state and the RUNNING trials'
heartbeats, in one query whose cost does not grow with the number of workers.

Why not a snapshot (``study.get_trials()``): Optuna's RDB cache re-reads each unfinished trial of
the study in full on every such call (see :mod:`search.study.cached`, which the run loop's study
reads through). A loop that took a snapshot on every turn, every epoch and for every check re-read
each running trial about 14 times per trial, so a trial's storage work grew with the number of
running workers and the database's with its square. Here :meth:`StudyReader.running` is one SQL
statement (one snapshot): the study's trial counts by state and its RUNNING trials' number, start
and last heartbeat (no params, no attrs).

Optuna has no public API that counts trials by state or lists their ids without reading them in
full, nor one that reads a heartbeat, so these queries name the storage schema's tables and columns
(``trials``, ``trial_heartbeats``: unchanged since Optuna 2.x) instead of importing the private
``optuna.storages._rdb.models``. Trials themselves are read through the public
``RDBStorage.get_trial``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from search.study.study import RunningTrial

log = logging.getLogger(__name__)

# A trial state is stored by its name (SQLAlchemy's Enum): 'RUNNING', 'COMPLETE', ... One row of
# the counts (no trial id), then one per RUNNING trial, from one statement (one snapshot: a trial
# finishing meanwhile is counted once). Sums, not ``GROUP BY state``: grouping by PostgreSQL's enum
# type makes each new backend look up its sort and hash operators, about 150 more catalog rows
# read per worker process (issue 31).
_COUNTED = ("COMPLETE", "PRUNED", "FAIL", "WAITING")
_TALLY = sqlalchemy.text(
    "SELECT NULL, NULL, NULL, NULL, "
    + ", ".join(f"SUM(CASE WHEN t.state = '{s}' THEN 1 ELSE 0 END)" for s in _COUNTED)
    + " FROM trials t WHERE t.study_id = :sid"
    " UNION ALL"
    " SELECT t.trial_id, t.number, t.datetime_start, h.heartbeat, NULL, NULL, NULL, NULL FROM trials t"
    " LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
    " WHERE t.study_id = :sid AND t.state = 'RUNNING'"
).columns(
    sqlalchemy.column("trial_id", sqlalchemy.Integer),
    sqlalchemy.column("number", sqlalchemy.Integer),
    sqlalchemy.column("started", sqlalchemy.DateTime),
    sqlalchemy.column("heartbeat", sqlalchemy.DateTime),
    *(sqlalchemy.column(s.lower(), sqlalchemy.Integer) for s in _COUNTED),
)


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
        for trial_id, number, started, beat, *sums in rows:
            if trial_id is None:  # the counts
                counts.update({TrialState[s]: int(n) for s, n in zip(_COUNTED, sums, strict=True) if n})
                continue
            heartbeat = None if beat is None else _naive(beat)
            running.append(_Row(int(trial_id), int(number), started, heartbeat))
        if running:
            counts[TrialState.RUNNING] = len(running)
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


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE trials: through the run loop's :class:`search.study.cached.StudyStorage`
    each is read once per process."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
