"""Trials read from Optuna's RDB schema with plain SQL, straight into ``FrozenTrial``.

Optuna's ``RDBStorage`` reads a trial through its SQLAlchemy ORM models: a set of trials costs
about 3 ms of client CPU per trial (5 params, 15 user attrs, 10 intermediate values; 105 trials
~300 ms on a 2-core Xeon), most of it building ORM objects and their relationships, then the
``FrozenTrial``. A study with N workers has each worker read every other worker's finished
trials, and a worker joining a large study reads all of them first, so that cost is paid N times.
Here each of the trial tables is one ``SELECT`` of plain rows, and the ``FrozenTrial`` is built
the way Optuna's ``RDBStorage._build_frozen_trial_from_trial_model`` builds it (values by
objective, infinities and NaN from their stored type, params in insertion order through their
distribution's ``to_external_repr``, attrs as JSON, times stored in UTC handed back in local
time); ``tests/store/test_trial_rows.py`` checks the two give equal trials on SQLite and
PostgreSQL, away from UTC.

A finished trial never changes (Optuna refuses writes to it), so the six reads need not share one
snapshot; a RUNNING trial read here may gain a param, a step or its end between them, as with
Optuna's own read (each statement of a PostgreSQL transaction sees what was committed before it).
The queries name the storage schema's tables and columns, unchanged since Optuna 2.x, as
:mod:`search.study.tally` does.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
# Up to this many trials: one read each by its id (index reads); beyond, one read of them all.
# On PostgreSQL an IN list over a small table is planned as a scan of the whole table.
BY_ID = 4
CHUNK = 1000

_INF = {"INF_POS": float("inf"), "INF_NEG": float("-inf"), "NAN": float("nan")}
_COLUMNS = {
    "trials": "trial_id, number, state, datetime_start, datetime_complete",
    "trial_values": "trial_id, objective, value, value_type",
    "trial_intermediate_values": "trial_id, step, intermediate_value, intermediate_value_type",
    "trial_params": "trial_id, param_name, param_value, distribution_json",
    "trial_user_attributes": "trial_id, key, value_json",
    "trial_system_attributes": "trial_id, key, value_json",
}
_ORDER = {
    "trials": "trial_id",
    "trial_values": "trial_value_id",
    "trial_intermediate_values": "trial_intermediate_value_id",
    "trial_params": "param_id",
    "trial_user_attributes": "trial_user_attribute_id",
    "trial_system_attributes": "trial_system_attribute_id",
}
_TYPES = {  # by name; SQLite hands datetimes back as text: SQLAlchemy's DateTime parses them
    "trials": {"datetime_start": sqlalchemy.DateTime, "datetime_complete": sqlalchemy.DateTime},
}
STUDY_FINISHED = f"study_id = :sid AND state IN {FINISHED_STATES!r}"

# What a sampler reads of a RUNNING trial (TPE's constant liar, the GP sampler): its params and
# system attrs; not its user attrs and steps, which grow as it trains (issue 31).
SAMPLED = ("trials", "trial_params", "trial_system_attributes")

Rows = dict[str, dict[int, list[Any]]]  # table -> trial id -> its rows


def _query(table: str, where: str) -> sqlalchemy.TextClause | sqlalchemy.TextualSelect:
    clause = sqlalchemy.text(f"SELECT {_COLUMNS[table]} FROM {table} WHERE {where} ORDER BY {_ORDER[table]}")
    return clause.columns(**_TYPES[table]) if table in _TYPES else clause


@functools.cache
def _queries(where: str, expanding: bool) -> dict[str, sqlalchemy.TextClause | sqlalchemy.TextualSelect]:
    """The six SELECTs; ``where`` names the trials (``:tid``, ``:ids`` or ``:sid``)."""
    queries = {}
    for table in _COLUMNS:
        condition = where
        if where == STUDY_FINISHED and table != "trials":
            condition = f"trial_id IN (SELECT trial_id FROM trials WHERE {where})"
        clause = _query(table, condition)
        if expanding:
            clause = clause.bindparams(sqlalchemy.bindparam("ids", expanding=True))
        queries[table] = clause
    return queries


def _fetch(
    conn: sqlalchemy.Connection,
    where: str,
    params: dict[str, Any],
    rows: Rows,
    tables: Iterable[str] = _COLUMNS,
) -> None:
    queries = _queries(where, "ids" in params)
    for table in tables:
        for row in conn.execute(queries[table], params):
            rows[table][int(row[0])].append(row)


@functools.cache
def _distribution(distribution_json: str) -> BaseDistribution:
    return json_to_distribution(distribution_json)


def _local(utc: datetime | None) -> datetime | None:
    """A stored time as Optuna 5.1's models return it: stored as naive UTC, handed back as naive
    local time (``TrialModel.datetime_start``)."""
    return None if utc is None else utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


def _stored(value: float | None, kind: str) -> float:
    """A value from its stored form: a finite number, or None and the kind (INF_POS, INF_NEG, NAN)."""
    return float(value) if kind == "FINITE" and value is not None else _INF[kind]


def _frozen(trial: Any, rows: Rows) -> FrozenTrial:
    """One trial from its rows, as Optuna's RDB storage builds it."""
    tid = int(trial.trial_id)
    values: list[float] | None = None
    if rows["trial_values"][tid]:
        values = [0.0] * len(rows["trial_values"][tid])
        for row in rows["trial_values"][tid]:
            values[row.objective] = _stored(row.value, row.value_type)
    params, distributions = {}, {}
    for row in rows["trial_params"][tid]:
        dist = distributions[row.param_name] = _distribution(row.distribution_json)
        params[row.param_name] = dist.to_external_repr(row.param_value)
    return FrozenTrial(
        number=int(trial.number),
        state=TrialState[trial.state],
        value=None,
        values=values,
        datetime_start=_local(trial.datetime_start),
        datetime_complete=_local(trial.datetime_complete),
        params=params,
        distributions=distributions,
        user_attrs={row.key: json.loads(row.value_json) for row in rows["trial_user_attributes"][tid]},
        system_attrs={row.key: json.loads(row.value_json) for row in rows["trial_system_attributes"][tid]},
        intermediate_values={
            int(row.step): _stored(row.intermediate_value, row.intermediate_value_type)
            for row in rows["trial_intermediate_values"][tid]
        },
        trial_id=tid,
    )


def _built(rows: Rows) -> list[FrozenTrial]:
    return [_frozen(trial, rows) for trials in rows["trials"].values() for trial in trials]


def _empty() -> Rows:
    return {table: defaultdict(list) for table in _COLUMNS}


def read_trials(
    engine: sqlalchemy.Engine, trial_ids: Iterable[int], sampled: Collection[int] = ()
) -> list[FrozenTrial]:
    """The trials of ``trial_ids`` (an unknown id is left out), by id; those also in ``sampled``
    as a sampler sees them (:data:`SAMPLED`: no user attrs, values or steps)."""
    ids = sorted(set(trial_ids))
    rows = _empty()
    rest = [t for t in _COLUMNS if t not in SAMPLED]
    with engine.connect() as conn:
        if len(ids) <= BY_ID:
            for tid in ids:
                _fetch(conn, "trial_id = :tid", {"tid": tid}, rows, SAMPLED if tid in sampled else _COLUMNS)
        else:  # in chunks: SQLite takes at most 32,766 bound values a statement
            full = [tid for tid in ids if tid not in sampled]
            groups = ((ids, SAMPLED), (full, rest)) if len(full) < len(ids) else ((ids, tuple(_COLUMNS)),)
            for chunk, tables in groups:
                for start in range(0, len(chunk), CHUNK):
                    _fetch(conn, "trial_id IN :ids", {"ids": chunk[start : start + CHUNK]}, rows, tables)
    return _built(rows)


def read_finished(engine: sqlalchemy.Engine, study_id: int) -> list[FrozenTrial]:
    """Every finished trial of the study (a worker joining it), by id."""
    rows = _empty()
    with engine.connect() as conn:
        _fetch(conn, STUDY_FINISHED, {"sid": study_id}, rows)
    return _built(rows)
